// A minimal client of the Wallet API, with no dependencies and no build step: sign in with
// a bearer token, list your wallets, page through a wallet's transactions (newest first),
// and follow its balance and transactions live over the subscriptions websocket.
//
// Amounts are decimal strings and are shown as they come: never turn money into a
// JavaScript number (a float), which cannot hold most decimal fractions exactly.

const GRAPHQL_URL = new URL("/graphql", location.href).href;
const WS_URL = GRAPHQL_URL.replace(/^http/, "ws") + "/ws";
const PAGE = 5;

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("wallet-token") || "";
let current = null; // { id, currency, oldestCursor, rows: Map<id, tr>, stop() }

/** POSTs one operation to /graphql; resolves to `data`, or throws with the errors. */
async function graphql(query, variables = {}) {
  const response = await fetch(GRAPHQL_URL, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      Accept: "application/graphql-response+json",
      Authorization: `Bearer ${token}`,
    },
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  if (body.errors) {
    const codes = body.errors.map((e) => `${e.extensions?.code ?? "ERROR"}: ${e.message}`);
    throw new Error(codes.join("\n"));
  }
  return body.data;
}

/**
 * Runs a subscription over graphql-transport-ws (the protocol GraphiQL, Apollo and urql
 * speak): `connection_init` carries the token, then one `subscribe` per operation. On a
 * dropped connection it reconnects with a growing delay and calls `onReconnect`, since
 * events sent while it was away are not replayed: reload what you show. Returns a
 * function that stops it.
 */
function subscribe(operations, { onNext, onState, onReconnect }) {
  let socket;
  let stopped = false;
  let retry = 0;
  let timer;
  function open() {
    socket = new WebSocket(WS_URL, "graphql-transport-ws");
    socket.onopen = () =>
      socket.send(
        JSON.stringify({ type: "connection_init", payload: { Authorization: `Bearer ${token}` } }),
      );
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      switch (message.type) {
        case "connection_ack":
          operations.forEach(({ query, variables }, i) =>
            socket.send(
              JSON.stringify({ type: "subscribe", id: String(i), payload: { query, variables } }),
            ),
          );
          onState(true);
          if (retry > 0) onReconnect();
          retry = 0;
          break;
        case "ping":
          socket.send(JSON.stringify({ type: "pong" }));
          break;
        case "next":
          onNext(Number(message.id), message.payload);
          break;
        case "error":
          showError(message.payload.map((e) => e.message).join("\n"));
          break;
      }
    };
    socket.onclose = (event) => {
      onState(false);
      if (stopped) return;
      // 4401: the token was refused or has expired; retrying will not help.
      if (event.code === 4401) return showError("Your token was refused: sign in again.");
      retry += 1;
      timer = setTimeout(open, Math.min(30000, 500 * 2 ** retry));
    };
  }
  open();
  return () => {
    stopped = true;
    clearTimeout(timer);
    socket.close(1000);
  };
}

function showError(message) {
  $("error").textContent = message;
}

async function signIn() {
  showError("");
  const data = await graphql(`{
    viewer {
      userId
      role
      wallets(first: 50) { nodes { id currency kind balance } }
    }
  }`);
  sessionStorage.setItem("wallet-token", token);
  $("who").textContent = `${data.viewer.userId} (${data.viewer.role.toLowerCase()})`;
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
  $("app").hidden = false;
  const list = $("wallets");
  list.replaceChildren();
  for (const wallet of data.viewer.wallets.nodes) {
    const button = document.createElement("button");
    button.textContent = walletLabel(wallet);
    button.dataset.wallet = wallet.id;
    button.onclick = () => openWallet(wallet, button);
    const item = document.createElement("li");
    item.append(button);
    list.append(item);
  }
  if (data.viewer.wallets.nodes.length === 0) list.textContent = "No wallets yet.";
}

const walletLabel = (wallet) => `${wallet.currency} · ${wallet.balance}`;

const TRANSACTION_FIELDS = "id type amount status balanceAfter createdAt";

async function openWallet(wallet, button) {
  current?.stop();
  document.querySelectorAll("#wallets button").forEach((b) => b.classList.remove("selected"));
  button.classList.add("selected");
  $("wallet").hidden = false;
  $("wallet-title").textContent = `${wallet.currency} wallet`;
  $("transactions").replaceChildren();
  current = { id: wallet.id, oldestCursor: null, rows: new Map(), stop: () => {} };
  await loadNewest(wallet.id);
  const opened = current;
  current.stop = subscribe(
    [
      {
        query: `subscription ($id: ID!) { walletUpdated(walletId: $id) { balance availableBalance } }`,
        variables: { id: wallet.id },
      },
      {
        query: `subscription ($id: ID) { transactionUpdated(walletId: $id) { ${TRANSACTION_FIELDS} } }`,
        variables: { id: wallet.id },
      },
    ],
    {
      onNext(which, payload) {
        if (current !== opened || !payload.data) return;
        if (which === 0) {
          showBalance(payload.data.walletUpdated);
          button.textContent = walletLabel({ ...wallet, ...payload.data.walletUpdated });
        }
        else showTransaction(payload.data.transactionUpdated, "top", true);
      },
      onState(on) {
        $("live").classList.toggle("on", on);
        $("live").textContent = on ? "live" : "reconnecting…";
      },
      onReconnect: () => current === opened && loadNewest(wallet.id),
    },
  );
}

/** The newest page: `last: N` is the end of the oldest-first journal. */
async function loadNewest(walletId) {
  const data = await graphql(
    `query ($id: ID!, $last: Int!) {
      wallet(id: $id) {
        balance availableBalance
        transactions(last: $last) {
          nodes { ${TRANSACTION_FIELDS} }
          pageInfo { hasPreviousPage startCursor }
        }
      }
    }`,
    { id: walletId, last: PAGE },
  );
  showBalance(data.wallet);
  const page = data.wallet.transactions;
  for (const t of page.nodes) showTransaction(t, "top");
  if (current.oldestCursor === null) {
    current.oldestCursor = page.pageInfo.startCursor;
    $("older").hidden = !page.pageInfo.hasPreviousPage;
  }
}

/** The page before the oldest row shown: `last: N, before: cursor`. */
async function loadOlder() {
  const data = await graphql(
    `query ($id: ID!, $last: Int!, $before: String) {
      wallet(id: $id) {
        transactions(last: $last, before: $before) {
          nodes { ${TRANSACTION_FIELDS} }
          pageInfo { hasPreviousPage startCursor }
        }
      }
    }`,
    { id: current.id, last: PAGE, before: current.oldestCursor },
  );
  const page = data.wallet.transactions;
  for (const t of [...page.nodes].reverse()) showTransaction(t, "bottom");
  current.oldestCursor = page.pageInfo.startCursor;
  $("older").hidden = !page.pageInfo.hasPreviousPage;
}

function showBalance(wallet) {
  $("balance").textContent = wallet.balance;
  $("available").textContent = wallet.availableBalance;
}

/** Adds a transaction row, or updates it in place when it is already shown. */
function showTransaction(t, where, live = false) {
  const cells = [new Date(t.createdAt).toLocaleString(), t.type, t.amount, t.status, t.balanceAfter];
  let row = current.rows.get(t.id);
  const isNew = !row;
  if (isNew) {
    row = document.createElement("tr");
    row.dataset.id = t.id;
    for (const name of ["when", "type", "amount", "status", "after"]) {
      const cell = document.createElement("td");
      cell.className = name;
      row.append(cell);
    }
    current.rows.set(t.id, row);
    if (where === "top") $("transactions").prepend(row);
    else $("transactions").append(row);
  }
  cells.forEach((text, i) => (row.children[i].textContent = text));
  if (isNew && live) row.classList.add("fresh");
}

$("sign-in").onsubmit = (event) => {
  event.preventDefault();
  token = $("token").value.trim().replace(/^Bearer\s+/i, "");
  signIn().catch((e) => showError(e.message));
};
$("sign-out").onclick = () => {
  current?.stop();
  sessionStorage.removeItem("wallet-token");
  location.reload();
};
$("older").onclick = () => loadOlder().catch((e) => showError(e.message));
if (token) signIn().catch((e) => showError(e.message));
