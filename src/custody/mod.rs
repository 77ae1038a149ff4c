//! Custody: one BIP39 seed, kept outside the database, from which every deposit
//! address is derived — BIP84 (native segwit, bech32) for bitcoin, BIP44 with EIP-55
//! checksums for ethereum. The database stores the derivation path and the address only.

pub mod fingerprint;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};

use bitcoin::bip32::{DerivationPath, Xpriv};
use bitcoin::secp256k1::{All, Message, PublicKey, Secp256k1, SecretKey};

/// Chains the custody layer knows how to derive addresses for (`currencies.network`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Chain {
    Bitcoin,
    Ethereum,
}

impl Chain {
    pub fn from_network(network: &str) -> Option<Chain> {
        match network {
            "bitcoin" => Some(Chain::Bitcoin),
            "ethereum" => Some(Chain::Ethereum),
            _ => None,
        }
    }

    pub fn network(self) -> &'static str {
        match self {
            Chain::Bitcoin => "bitcoin",
            Chain::Ethereum => "ethereum",
        }
    }

    /// The derivation path of address `index` (external chain, account 0).
    pub fn path(self, index: u32) -> String {
        match self {
            Chain::Bitcoin => format!("m/84'/0'/0'/0/{index}"),
            Chain::Ethereum => format!("m/44'/60'/0'/0/{index}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CustodyError {
    #[error("the seed is not a valid BIP39 mnemonic: {0}")]
    InvalidMnemonic(String),
    #[error("the seed file {0}: {1}")]
    SeedFile(String, String),
    #[error("no seed is configured (WALLET_SEED or WALLET_SEED_FILE); required in production")]
    MissingSeed,
    #[error("derivation failed: {0}")]
    Derivation(String),
    #[error(
        "the custody seed is not the one this database's wallets were derived from \
         (recorded fingerprint {recorded}, this seed's {this}): restore the original seed, \
         or point DATABASE_URL at a new database"
    )]
    SeedChanged { recorded: String, this: String },
}

/// A derived receiving address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derived {
    pub path: String,
    pub address: String,
}

/// The master key. Never printed, never stored.
pub struct Custody {
    master: Xpriv,
    secp: Secp256k1<All>,
}

impl fmt::Debug for Custody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Custody(..)")
    }
}

/// Where the seed comes from. `Debug` never shows a mnemonic.
#[derive(Clone, Debug)]
pub enum SeedSource {
    Mnemonic(SecretString),
    File(std::path::PathBuf),
    /// Development only: a fresh random seed (addresses change at every start).
    Generate,
}

impl Custody {
    pub fn from_mnemonic(phrase: &str) -> Result<Custody, CustodyError> {
        let mnemonic = bip39::Mnemonic::parse_normalized(phrase.trim())
            .map_err(|e| CustodyError::InvalidMnemonic(e.to_string()))?;
        let seed = mnemonic.to_seed("");
        let master = Xpriv::new_master(bitcoin::NetworkKind::Main, &seed)
            .map_err(|e| CustodyError::Derivation(e.to_string()))?;
        Ok(Custody {
            master,
            secp: Secp256k1::new(),
        })
    }

    /// Reads the mnemonic from a file kept as one would keep an SSH key: a regular file,
    /// not a symlink, owned by the user the service runs as, readable by that user only
    /// (mode 0600 or 0400). The checks are made on the opened file, so the file cannot be
    /// swapped between the check and the read.
    pub fn from_file(path: &Path) -> Result<Custody, CustodyError> {
        use std::io::Read;
        let shown = path.display().to_string();
        let refuse = |why: String| CustodyError::SeedFile(shown.clone(), why);
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // A symlink is refused by open(2) itself (ELOOP) rather than followed.
            options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
        }
        let mut file = options.open(path).map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                refuse("is a symlink; point WALLET_SEED_FILE at the file itself".into())
            } else {
                refuse(e.to_string())
            }
        })?;
        let meta = file.metadata().map_err(|e| refuse(e.to_string()))?;
        if !meta.is_file() {
            return Err(refuse("is not a regular file".into()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let owner = rustix::process::geteuid().as_raw();
            if meta.uid() != owner {
                return Err(refuse(format!(
                    "is owned by uid {}, not by the service's user (uid {owner}); chown it",
                    meta.uid()
                )));
            }
            let mode = meta.mode() & 0o777;
            if mode & 0o177 != 0 {
                return Err(refuse(format!(
                    "must be readable by its owner only (mode {mode:o}); chmod 600 it"
                )));
            }
        }
        let mut phrase = String::new();
        file.read_to_string(&mut phrase)
            .map_err(|e| refuse(e.to_string()))?;
        let phrase = SecretString::from(phrase);
        Custody::from_mnemonic(phrase.expose_secret())
    }

    /// A random seed for development; returns the mnemonic so it can be shown once.
    pub fn generate() -> Result<(Custody, String), CustodyError> {
        let entropy: [u8; 32] = rand::random();
        let mnemonic = bip39::Mnemonic::from_entropy(&entropy)
            .map_err(|e| CustodyError::InvalidMnemonic(e.to_string()))?;
        let phrase = mnemonic.to_string();
        Ok((Custody::from_mnemonic(&phrase)?, phrase))
    }

    pub fn load(source: &SeedSource) -> Result<Custody, CustodyError> {
        match source {
            SeedSource::Mnemonic(phrase) => Custody::from_mnemonic(phrase.expose_secret()),
            SeedSource::File(path) => Custody::from_file(path),
            SeedSource::Generate => Custody::generate().map(|(c, _)| c),
        }
    }

    /// Identifies the seed without revealing anything about it: SHA-256 of the master
    /// extended public key, in hex. Stored in the database to notice a changed seed.
    pub fn fingerprint(&self) -> String {
        use bitcoin::hashes::{Hash, sha256};
        let xpub = bitcoin::bip32::Xpub::from_priv(&self.secp, &self.master);
        sha256::Hash::hash(&xpub.encode()).to_string()
    }

    fn private_key(&self, path: &str) -> Result<SecretKey, CustodyError> {
        let path =
            DerivationPath::from_str(path).map_err(|e| CustodyError::Derivation(e.to_string()))?;
        let child = self
            .master
            .derive_priv(&self.secp, &path)
            .map_err(|e| CustodyError::Derivation(e.to_string()))?;
        Ok(child.private_key)
    }

    fn public_key(&self, path: &str) -> Result<PublicKey, CustodyError> {
        Ok(PublicKey::from_secret_key(
            &self.secp,
            &self.private_key(path)?,
        ))
    }

    /// Signs a 32-byte digest with the key at `path` (ECDSA over secp256k1, RFC 6979
    /// nonces, so the same digest always gets the same signature). Returns the compact
    /// 64-byte signature.
    pub fn sign(&self, path: &str, digest: [u8; 32]) -> Result<[u8; 64], CustodyError> {
        let key = self.private_key(path)?;
        let signature = self.secp.sign_ecdsa(&Message::from_digest(digest), &key);
        Ok(signature.serialize_compact())
    }

    /// The key at `path` as an Ethereum signer (for transactions in the network's own
    /// format, whose signatures carry the recovery bit a bare signature lacks).
    pub fn ethereum_signer(
        &self,
        path: &str,
    ) -> Result<alloy::signers::local::PrivateKeySigner, CustodyError> {
        let key = self.private_key(path)?;
        alloy::signers::local::PrivateKeySigner::from_bytes(&alloy::primitives::B256::from(
            key.secret_bytes(),
        ))
        .map_err(|e| CustodyError::Derivation(e.to_string()))
    }

    /// Checks a signature made by [`Custody::sign`] against the key at `path`.
    pub fn verify(&self, path: &str, digest: [u8; 32], signature: &[u8; 64]) -> bool {
        let (Ok(key), Ok(signature)) = (
            self.public_key(path),
            bitcoin::secp256k1::ecdsa::Signature::from_compact(signature),
        ) else {
            return false;
        };
        self.secp
            .verify_ecdsa(&Message::from_digest(digest), &signature, &key)
            .is_ok()
    }

    /// The receiving address `index` of `chain`.
    pub fn derive(&self, chain: Chain, index: u32) -> Result<Derived, CustodyError> {
        let path = chain.path(index);
        let address = self.address_at(chain, &path)?;
        Ok(Derived { path, address })
    }

    /// The address of `chain` whose key is at `path` (what this seed can sign for).
    pub fn address_at(&self, chain: Chain, path: &str) -> Result<String, CustodyError> {
        let key = self.public_key(path)?;
        let address = match chain {
            Chain::Bitcoin => {
                let key = bitcoin::CompressedPublicKey(key);
                bitcoin::Address::p2wpkh(&key, bitcoin::Network::Bitcoin).to_string()
            }
            Chain::Ethereum => {
                // The address is the last 20 bytes of keccak256 of the uncompressed key
                // without its 0x04 prefix.
                let uncompressed = key.serialize_uncompressed();
                let hash = alloy_primitives::keccak256(&uncompressed[1..]);
                alloy_primitives::Address::from_slice(&hash[12..]).to_checksum(None)
            }
        };
        Ok(address)
    }
}

/// Checks a destination address for `chain` and returns it in canonical form, or says
/// what is wrong with it.
pub fn validate_address(chain: Chain, address: &str) -> Result<String, String> {
    let address = address.trim();
    match chain {
        Chain::Bitcoin => {
            let parsed = bitcoin::Address::from_str(address)
                .map_err(|e| format!("not a bitcoin address: {e}"))?;
            let checked = parsed
                .require_network(bitcoin::Network::Bitcoin)
                .map_err(|_| "the address is for another bitcoin network".to_owned())?;
            Ok(checked.to_string())
        }
        Chain::Ethereum => {
            let hex = address
                .strip_prefix("0x")
                .ok_or("an ethereum address starts with 0x")?;
            let mixed_case = hex.chars().any(|c| c.is_ascii_uppercase())
                && hex.chars().any(|c| c.is_ascii_lowercase());
            let parsed = if mixed_case {
                alloy_primitives::Address::parse_checksummed(address, None)
                    .map_err(|_| "the EIP-55 checksum does not match".to_owned())?
            } else {
                alloy_primitives::Address::from_str(address)
                    .map_err(|_| "not a 20-byte hex address".to_owned())?
            };
            Ok(parsed.to_checksum(None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABANDON: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
    const HARDHAT: &str = "test test test test test test test test test test test junk";

    #[test]
    fn bip84_test_vector() {
        // BIP84's published vector for the "abandon … about" mnemonic.
        let custody = Custody::from_mnemonic(ABANDON).unwrap();
        let first = custody.derive(Chain::Bitcoin, 0).unwrap();
        assert_eq!(first.path, "m/84'/0'/0'/0/0");
        assert_eq!(first.address, "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu");
        let second = custody.derive(Chain::Bitcoin, 1).unwrap();
        assert_eq!(second.address, "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g");
    }

    #[test]
    fn bip44_ethereum_test_vector() {
        // The well-known first two accounts of the "test … junk" development mnemonic.
        let custody = Custody::from_mnemonic(HARDHAT).unwrap();
        let first = custody.derive(Chain::Ethereum, 0).unwrap();
        assert_eq!(first.path, "m/44'/60'/0'/0/0");
        assert_eq!(first.address, "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
        assert_eq!(
            custody.derive(Chain::Ethereum, 1).unwrap().address,
            "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
        );
    }

    #[test]
    fn the_ethereum_signer_is_the_key_of_the_derived_address() {
        use alloy::signers::SignerSync as _;
        let custody = Custody::from_mnemonic(HARDHAT).unwrap();
        for index in 0..3 {
            let derived = custody.derive(Chain::Ethereum, index).unwrap();
            let signer = custody.ethereum_signer(&derived.path).unwrap();
            assert_eq!(signer.address().to_checksum(None), derived.address);
            let digest = alloy::primitives::B256::repeat_byte(7);
            let signature = signer.sign_hash_sync(&digest).unwrap();
            assert_eq!(
                signature.recover_address_from_prehash(&digest).unwrap(),
                signer.address()
            );
        }
        assert!(custody.ethereum_signer("not a path").is_err());
    }

    #[test]
    fn bad_mnemonics_are_refused() {
        assert!(Custody::from_mnemonic("abandon abandon abandon").is_err());
        // Valid words, wrong checksum.
        let wrong = ABANDON.replace("about", "abandon");
        assert!(matches!(
            Custody::from_mnemonic(&wrong),
            Err(CustodyError::InvalidMnemonic(_))
        ));
    }

    #[test]
    fn seed_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("wallet-seed-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("seed");
        std::fs::write(&file, format!("{ABANDON}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Custody::from_file(&file),
            Err(CustodyError::SeedFile(..))
        ));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let custody = Custody::from_file(&file).unwrap();
        assert_eq!(
            custody.derive(Chain::Bitcoin, 0).unwrap().address,
            "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
        );
        // A symlink to a good file is refused, not followed.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let refused = Custody::from_file(&link).unwrap_err().to_string();
        assert!(refused.contains("symlink"), "{refused}");
        // Owned by someone else (only root can give a file away).
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
            let refused = Custody::from_file(&file).unwrap_err().to_string();
            assert!(refused.contains("owned by uid 65534"), "{refused}");
        }
        // A directory is not a seed.
        assert!(Custody::from_file(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fingerprints_tell_seeds_apart_and_reveal_no_key() {
        let a = Custody::from_mnemonic(ABANDON).unwrap();
        let again = Custody::from_mnemonic(ABANDON).unwrap();
        let b = Custody::from_mnemonic(HARDHAT).unwrap();
        assert_eq!(a.fingerprint(), again.fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        assert!(!format!("{:?}", SeedSource::Mnemonic(ABANDON.into())).contains("abandon"));
    }

    #[test]
    fn generated_seeds_differ_and_round_trip() {
        let (a, phrase) = Custody::generate().unwrap();
        let (b, _) = Custody::generate().unwrap();
        assert_eq!(phrase.split_whitespace().count(), 24);
        let again = Custody::from_mnemonic(&phrase).unwrap();
        let first = |c: &Custody| c.derive(Chain::Ethereum, 0).unwrap().address;
        assert_eq!(first(&a), first(&again));
        assert_ne!(first(&a), first(&b));
    }

    #[test]
    fn destination_addresses_are_validated() {
        let ok = |c, a: &str| validate_address(c, a);
        assert_eq!(
            ok(Chain::Bitcoin, "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu").unwrap(),
            "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
        );
        // One character changed: the bech32 checksum fails.
        assert!(ok(Chain::Bitcoin, "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyv").is_err());
        // A testnet address on the bitcoin network.
        assert!(ok(Chain::Bitcoin, "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx").is_err());
        assert!(ok(Chain::Bitcoin, "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266").is_err());

        let eth = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
        assert_eq!(ok(Chain::Ethereum, eth).unwrap(), eth);
        // All lower case carries no checksum: accepted, returned checksummed.
        assert_eq!(ok(Chain::Ethereum, &eth.to_lowercase()).unwrap(), eth);
        // Mixed case with one letter's case flipped: the EIP-55 checksum fails.
        assert!(
            ok(
                Chain::Ethereum,
                "0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
            )
            .is_err()
        );
        assert!(ok(Chain::Ethereum, "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb9226").is_err());
        assert!(
            ok(
                Chain::Ethereum,
                "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
            )
            .is_err()
        );
    }
}
