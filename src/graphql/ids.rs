//! Opaque identifiers: Relay global object ids and keyset cursors.

use async_graphql::ID;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;

use super::error::bad_input;
use crate::ledger::Cursor;

pub use crate::global_id::NodeType;

pub fn encode_id(kind: NodeType, id: i64) -> ID {
    ID(crate::global_id::encode(kind, id))
}

/// Decodes any global id (for `node`).
pub fn decode_any(id: &ID) -> async_graphql::Result<(NodeType, i64)> {
    let malformed = || bad_input(format!("{:?} is not a valid id", id.as_str()));
    let raw = URL_SAFE_NO_PAD
        .decode(id.as_bytes())
        .map_err(|_| malformed())?;
    let text = String::from_utf8(raw).map_err(|_| malformed())?;
    let (kind, num) = text.split_once(':').ok_or_else(malformed)?;
    let kind = NodeType::from_name(kind).ok_or_else(malformed)?;
    let num = num.parse::<i64>().map_err(|_| malformed())?;
    Ok((kind, num))
}

/// Decodes the id of a `kind` node. An id of another type names nothing of this kind,
/// so it is reported like any missing object.
pub fn decode_id(id: &ID, kind: NodeType) -> async_graphql::Result<i64> {
    let (found, num) = decode_any(id)?;
    if found != kind {
        return Err(super::error::not_found(kind.name()));
    }
    Ok(num)
}

/// A cursor is the row's position plus a fingerprint of the list it came from, so a cursor
/// cannot silently be applied to a list with other filters.
pub fn encode_cursor(list: u64, c: &Cursor) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "c1:{list:016x}:{}:{}",
        c.created_at.timestamp_micros(),
        c.id
    ))
}

pub fn decode_cursor(list: u64, s: &str) -> async_graphql::Result<Cursor> {
    let malformed = || bad_input(format!("{s:?} is not a valid cursor"));
    let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| malformed())?;
    let text = String::from_utf8(raw).map_err(|_| malformed())?;
    let mut parts = text.split(':');
    let (Some("c1"), Some(fp), Some(micros), Some(id), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(malformed());
    };
    if fp != format!("{list:016x}") {
        return Err(bad_input(
            "the cursor belongs to a list with other arguments (filters or parent); \
             page with the same arguments it was issued for",
        ));
    }
    let micros = micros.parse::<i64>().map_err(|_| malformed())?;
    let created_at = DateTime::from_timestamp_micros(micros).ok_or_else(malformed)?;
    let id = id.parse::<i64>().map_err(|_| malformed())?;
    Ok(Cursor { created_at, id })
}

/// FNV-1a: a fingerprint that is stable across processes and releases.
pub fn fingerprint(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = encode_id(NodeType::Wallet, 42);
        assert_eq!(decode_id(&id, NodeType::Wallet).unwrap(), 42);
        assert!(decode_id(&id, NodeType::Transaction).is_err());
        assert!(decode_any(&ID::from("nope")).is_err());
        assert!(decode_any(&ID::from(URL_SAFE_NO_PAD.encode("Wallet:x"))).is_err());
    }

    #[test]
    fn cursors_are_bound_to_their_list() {
        let c = Cursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: 7,
        };
        let s = encode_cursor(1, &c);
        assert_eq!(decode_cursor(1, &s).unwrap(), c);
        assert!(decode_cursor(2, &s).is_err());
        assert!(decode_cursor(1, "garbage").is_err());
        assert_ne!(fingerprint(&["a", "bc"]), fingerprint(&["ab", "c"]));
    }
}
