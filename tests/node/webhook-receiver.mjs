// A webhook endpoint for the delivery tests: verifies Standard Webhooks signatures with the
// reference library (`standardwebhooks`, pinned in package.json), logs every delivery as one
// JSON line, and answers as the test tells it through `POST /_control`.
//
//   node webhook-receiver.mjs --port <p> --secret <whsec_...[,whsec_...]> --log <file>
//                             [--mode ok|fail|hang|gone] [--status <n>]
//
// Port 0 picks a free port. Prints `LISTENING <port>` on stdout once listening.
//
// Every POST to a path other than /_control is logged (appended, one line each, flushed):
//   {"receivedAt": <ms>, "path": <path>, "id": <webhook-id>, "timestamp": <webhook-timestamp>,
//    "signature": <webhook-signature>, "verified": bool, "error": <string|null>,
//    "status": <status answered; 0 when it never answers>, "body": <raw body>}
// Missing headers are logged as null.
//
// Modes (POST /_control {"mode": ..., "status"?: n, "secret"?: "..."}; both fields optional):
//   ok   → 204 when the signature verifies (or `status`), 401 when it does not
//   fail → `status` (default 503)
//   hang → never answers (the connection stays open)
//   gone → 410
// `secret` replaces the verification secret; a comma-separated list verifies a delivery
// when any of them does (secret rotation). /_control answers 200 {"ok":true};
// GET /_control answers the current state.

import fs from "node:fs";
import http from "node:http";
import { parseArgs } from "node:util";
import standardwebhooks from "standardwebhooks";

const { Webhook } = standardwebhooks;

const MODES = ["ok", "fail", "hang", "gone"];

const { values: args } = parseArgs({
  options: {
    port: { type: "string", default: "0" },
    secret: { type: "string", default: "" },
    log: { type: "string" },
    mode: { type: "string", default: "ok" },
    status: { type: "string" },
  },
});

if (!args.log) {
  console.error("--log <file> is required");
  process.exit(2);
}
if (!MODES.includes(args.mode)) {
  console.error(`--mode must be one of ${MODES.join(", ")}`);
  process.exit(2);
}

/** Webhook verifiers for a comma-separated list of secrets (throws on a malformed one). */
function verifiers(secrets) {
  return secrets
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map((s) => new Webhook(s));
}

const state = {
  mode: args.mode,
  status: args.status === undefined ? null : Number(args.status),
  secret: args.secret,
  verifiers: verifiers(args.secret),
};

// The log exists from the start, and survives a restart on the same file.
fs.appendFileSync(args.log, "");

function verify(body, headers) {
  if (state.verifiers.length === 0) {
    return { verified: false, error: "no secret configured" };
  }
  const errors = [];
  for (const wh of state.verifiers) {
    try {
      wh.verify(body, headers, { jsonParse: false });
      return { verified: true, error: null };
    } catch (e) {
      errors.push(e && e.message ? e.message : String(e));
    }
  }
  return { verified: false, error: [...new Set(errors)].join("; ") };
}

function answerFor(verified) {
  switch (state.mode) {
    case "ok":
      return verified ? (state.status ?? 204) : 401;
    case "fail":
      return state.status ?? 503;
    case "gone":
      return 410;
    case "hang":
      return 0;
  }
  return 500;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function json(res, status, value) {
  const text = JSON.stringify(value);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

async function control(req, res) {
  if (req.method === "GET") {
    return json(res, 200, { mode: state.mode, status: state.status, secret: state.secret });
  }
  if (req.method !== "POST") {
    return json(res, 405, { ok: false, error: "GET or POST" });
  }
  let body;
  try {
    body = JSON.parse((await readBody(req)).toString("utf8") || "{}");
  } catch (e) {
    return json(res, 400, { ok: false, error: `not JSON: ${e.message}` });
  }
  if (body.mode !== undefined && !MODES.includes(body.mode)) {
    return json(res, 400, { ok: false, error: `mode must be one of ${MODES.join(", ")}` });
  }
  if (body.status !== undefined && body.status !== null && !Number.isInteger(body.status)) {
    return json(res, 400, { ok: false, error: "status must be an integer" });
  }
  let next;
  if (body.secret !== undefined) {
    try {
      next = verifiers(String(body.secret));
    } catch (e) {
      return json(res, 400, { ok: false, error: `bad secret: ${e.message}` });
    }
  }
  if (body.mode !== undefined) {
    state.mode = body.mode;
    state.status = body.status ?? null;
  } else if (body.status !== undefined) {
    state.status = body.status;
  }
  if (next !== undefined) {
    state.secret = String(body.secret);
    state.verifiers = next;
  }
  return json(res, 200, { ok: true });
}

async function delivery(req, res) {
  const raw = await readBody(req);
  const headers = {
    "webhook-id": req.headers["webhook-id"],
    "webhook-timestamp": req.headers["webhook-timestamp"],
    "webhook-signature": req.headers["webhook-signature"],
  };
  const { verified, error } = verify(raw, headers);
  const status = answerFor(verified);
  const line = {
    receivedAt: Date.now(),
    path: req.url,
    id: headers["webhook-id"] ?? null,
    timestamp: headers["webhook-timestamp"] ?? null,
    signature: headers["webhook-signature"] ?? null,
    verified,
    error,
    status,
    body: raw.toString("utf8"),
  };
  fs.appendFileSync(args.log, `${JSON.stringify(line)}\n`);
  if (status === 0) {
    return; // hang: no answer, the socket stays open until the client gives up
  }
  res.writeHead(status, { "content-length": 0 });
  res.end();
}

// A hung answer must stay hung: no server-side request timeouts.
const server = http.createServer({ requestTimeout: 0, headersTimeout: 0 }, (req, res) => {
  const path = (req.url ?? "/").split("?")[0];
  const handle =
    path === "/_control"
      ? control(req, res)
      : req.method === "POST"
        ? delivery(req, res)
        : Promise.resolve(json(res, 405, { ok: false, error: "POST only" }));
  handle.catch((e) => {
    console.error(e);
    if (!res.headersSent) {
      json(res, 500, { ok: false, error: String(e) });
    }
  });
});
server.timeout = 0;

server.on("error", (e) => {
  console.error(`webhook receiver: ${e.message}`);
  process.exit(1);
});

server.listen(Number(args.port), "127.0.0.1", () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}
