// The API through the GraphQL clients frontends use, unchanged and without server-side
// accommodations: Apollo Client (HttpLink with an Authorization header, GraphQLWsLink
// over graphql-ws, split by operation type, an InMemoryCache with relayStylePagination
// on Wallet.transactions) and urql (@urql/core with cacheExchange, fetchExchange — which
// sends queries as GET — and subscriptionExchange over graphql-ws). Node 20 has no global
// WebSocket: both use the `ws` package.
//
// Run by tests/clients.rs, which starts the service and passes WALLET_URL
// (http://127.0.0.1:PORT), WALLET_TOKEN (a user's JWT, without "Bearer "), WALLET_OPERATOR
// (an operator's JWT: deposits are operators' business) and WALLET_ID (a USD wallet of
// that user with a few deposits). Exits non-zero with a message on the first failed check;
// prints "apollo and urql work" on success. Never runs longer than 60 s.
import assert from "node:assert/strict";

// Apollo Client 3 has no "exports" map: ES modules must name the entry files.
import {
  ApolloClient,
  HttpLink,
  InMemoryCache,
  gql,
  split,
} from "@apollo/client/core/index.js";
import { loadDevMessages, loadErrorMessages } from "@apollo/client/dev/index.js";
import { GraphQLWsLink } from "@apollo/client/link/subscriptions/index.js";
import { getMainDefinition, relayStylePagination } from "@apollo/client/utilities/index.js";
import {
  Client as UrqlClient,
  cacheExchange,
  fetchExchange,
  gql as urqlGql,
  subscriptionExchange,
} from "@urql/core";
import { createClient as createWsClient } from "graphql-ws";
import WebSocket from "ws";

// Apollo's warnings and errors in words rather than as numbered links.
loadDevMessages();
loadErrorMessages();

const { WALLET_URL: base, WALLET_TOKEN: token, WALLET_OPERATOR: operator, WALLET_ID: walletId } =
  process.env;
for (const name of ["WALLET_URL", "WALLET_TOKEN", "WALLET_OPERATOR", "WALLET_ID"]) {
  if (!process.env[name]) fail(`${name} is not set (tests/clients.rs sets it)`);
}
const httpUrl = `${base}/graphql`;
const wsUrl = `${base.replace(/^http/, "ws")}/graphql/ws`;

const overall = setTimeout(() => fail("timed out after 60 s"), 60_000);
overall.unref();

function fail(message) {
  console.error(`clients test failed: ${message}`);
  process.exit(1);
}

/** Resolves with `promise`, or rejects after `ms`; a rejection names `what`. */
function within(ms, what, promise) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    }),
  ])
    .catch((e) => {
      const cause = e?.networkError?.cause;
      e.message = `${what}: ${e.message}${cause ? ` (${cause.message ?? cause})` : ""}`;
      throw e;
    })
    .finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until it returns something (or throws), for at most 10 s. */
async function until(what, probe) {
  for (let waited = 0; waited < 10_000; waited += 20) {
    const value = probe();
    if (value !== undefined) return value;
    await sleep(20);
  }
  throw new Error(`${what}: not within 10 s`);
}

// What the clients complain about (Apollo reports cache problems — missing fields, data it
// had to drop for want of an id or a merge function — as console warnings, not errors).
const complaints = [];
for (const level of ["warn", "error"]) {
  const original = console[level].bind(console);
  console[level] = (...args) => {
    complaints.push(args.map(String).join(" "));
    original(...args);
  };
}
const cacheComplaints = () =>
  complaints.filter((c) => /Missing field|Cache data may be lost|keyFields|normali[sz]e/i.test(c));

/** A plain POST, for ground truth independent of either client. */
async function raw(query, variables, bearer) {
  const response = await within(
    10_000,
    "plain POST",
    fetch(httpUrl, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${bearer}` },
      body: JSON.stringify({ query, variables }),
    }),
  );
  const body = await response.json();
  if (body.errors) throw new Error(`plain POST failed: ${JSON.stringify(body.errors)}`);
  return body.data;
}

/** A graphql-ws client as frontends configure it: the token as connection_init payload. */
function wsClient(label, events) {
  return createWsClient({
    url: wsUrl,
    webSocketImpl: WebSocket,
    connectionParams: { Authorization: `Bearer ${token}` },
    lazy: true,
    retryAttempts: 0,
    on: {
      connected: () => events.push("connected"),
      closed: (e) => events.push(`closed ${e?.code ?? ""} ${e?.reason ?? ""}`.trim()),
      error: (e) => events.push(`error ${e?.message ?? e}`),
    },
  });
}

/**
 * Once the socket is acknowledged, deposits (as the operator, through `deposit`) once a
 * second until `received()` returns an event whose id is one of the deposits made here:
 * graphql-transport-ws has no "subscribed" answer, so the subscription may in principle
 * still be starting on the server when the first deposit lands.
 */
async function depositUntilSeen(label, socketEvents, deposit, received) {
  await until(`${label}: the websocket's connection_ack`, () => {
    received(); // throws on a subscription error
    return socketEvents.includes("connected") || undefined;
  }).catch((e) => {
    if (e.message.includes("(socket:")) throw e;
    throw new Error(`${e.message} (socket: ${socketEvents.join("; ") || "nothing"})`);
  });
  const ids = new Set();
  for (let attempt = 1; attempt <= 15; attempt++) {
    const tx = await deposit(`${label}-sub-${Date.now()}-${attempt}`);
    assert.equal(tx.type, "DEPOSIT", `${label}: the deposit's type`);
    ids.add(tx.id);
    for (let waited = 0; waited < 1000; waited += 50) {
      const event = received().find((e) => ids.has(e.id));
      if (event) return { event, ids, deposits: attempt };
      await sleep(50);
    }
  }
  throw new Error(
    `${label}: no transactionUpdated event for any of the deposits ${[...ids].join(", ")} ` +
      `(received: ${JSON.stringify(received())})`,
  );
}

// ---------------------------------------------------------------------------------------
// Apollo Client
// ---------------------------------------------------------------------------------------

const apolloWsEvents = [];
const apolloWs = wsClient("apollo", apolloWsEvents);
const apollo = new ApolloClient({
  link: split(
    ({ query }) => {
      const definition = getMainDefinition(query);
      return definition.kind === "OperationDefinition" && definition.operation === "subscription";
    },
    new GraphQLWsLink(apolloWs),
    new HttpLink({ uri: httpUrl, headers: { authorization: `Bearer ${token}` } }),
  ),
  cache: new InMemoryCache({
    typePolicies: {
      Wallet: {
        fields: {
          // `filter` selects a different list; first/after/last/before page through one.
          transactions: relayStylePagination(["filter"]),
        },
      },
    },
  }),
});
const asOperator = { headers: { authorization: `Bearer ${operator}` } };

const DEPOSIT = gql`
  mutation Deposit($input: DepositInput!) {
    deposit(input: $input) {
      id
      type
      amount
      status
      idempotencyKey
      balanceAfter
      wallet {
        id
        balance
      }
    }
  }
`;

const HISTORY = gql`
  query History($id: ID!, $first: Int!, $after: String) {
    wallet(id: $id) {
      id
      transactions(first: $first, after: $after) {
        edges {
          cursor
          node {
            id
            type
            amount
            balanceAfter
          }
        }
        pageInfo {
          hasNextPage
          endCursor
        }
      }
    }
  }
`;

async function apolloChecks() {
  // A query: reference data, the caller, and their wallets.
  const { data: home, errors } = await within(
    10_000,
    "apollo query",
    apollo.query({
      query: gql`
        query Home($id: ID!) {
          currencies {
            code
            scale
            kind
          }
          viewer {
            userId
            role
            wallets(first: 10) {
              edges {
                node {
                  id
                  currency
                  balance
                }
              }
            }
          }
          wallet(id: $id) {
            id
            currency
            balance
          }
        }
      `,
      variables: { id: walletId },
    }),
  );
  assert.equal(errors, undefined, "apollo query: errors");
  const usd = home.currencies.find((c) => c.code === "USD");
  assert.ok(usd, `apollo query: no USD in currencies ${JSON.stringify(home.currencies)}`);
  assert.equal(usd.scale, 2, "apollo query: USD's scale");
  assert.equal(home.viewer.role, "USER", "apollo query: viewer.role");
  assert.ok(
    home.viewer.wallets.edges.some((e) => e.node.id === walletId),
    `apollo query: viewer.wallets lacks ${walletId}`,
  );
  assert.equal(home.wallet.currency, "USD", "apollo query: wallet.currency");
  const before = home.wallet.balance;

  // A mutation (the operator's, through the same client: per-operation headers), whose
  // answer updates the cached Wallet by its id; the same idempotency key again returns the
  // same transaction and moves nothing.
  const key = `apollo-${Date.now()}`;
  const deposit = () =>
    within(
      10_000,
      "apollo mutation",
      apollo.mutate({
        mutation: DEPOSIT,
        variables: { input: { walletId, amount: "4.20", idempotencyKey: key } },
        context: asOperator,
      }),
    );
  const first = await deposit();
  assert.equal(first.errors, undefined, "apollo mutation: errors");
  const tx = first.data.deposit;
  assert.equal(tx.type, "DEPOSIT", "apollo mutation: type");
  assert.equal(tx.amount, "4.20", "apollo mutation: amount");
  assert.equal(tx.status, "COMPLETED", "apollo mutation: status");
  assert.equal(tx.idempotencyKey, key, "apollo mutation: idempotencyKey");
  assert.equal(
    Number(tx.wallet.balance).toFixed(2),
    (Number(before) + 4.2).toFixed(2),
    "apollo mutation: the wallet's new balance",
  );
  const again = await deposit();
  assert.equal(again.data.deposit.id, tx.id, "apollo mutation: a replayed key gave a new transaction");
  assert.equal(again.data.deposit.wallet.balance, tx.wallet.balance, "apollo mutation: a replay moved money");
  // The same mutation as the user: refused, the code where Apollo puts GraphQL errors.
  const refused = await within(
    10_000,
    "apollo refused mutation",
    apollo.mutate({
      mutation: DEPOSIT,
      variables: { input: { walletId, amount: "1.00", idempotencyKey: `${key}-user` } },
    }),
  ).then(
    () => undefined,
    (e) => e,
  );
  assert.ok(refused, "apollo mutation: a user's deposit was not refused");
  assert.equal(
    refused.graphQLErrors?.[0]?.extensions?.code,
    "FORBIDDEN",
    `apollo mutation: a user's deposit: ${refused.message} ${JSON.stringify(refused.graphQLErrors)}`,
  );
  const cachedWallet = apollo.cache.identify({ __typename: "Wallet", id: walletId });
  assert.equal(
    apollo.cache.readFragment({
      id: cachedWallet,
      fragment: gql`
        fragment Balance on Wallet {
          balance
        }
      `,
    })?.balance,
    tx.wallet.balance,
    "apollo mutation: the cached Wallet was not updated by the mutation's answer",
  );
  assert.ok(
    apollo.cache.extract()[apollo.cache.identify({ __typename: "Transaction", id: tx.id })],
    "apollo mutation: the Transaction was not normalised into the cache",
  );

  // Pagination: two at a time with fetchMore; relayStylePagination merges the pages.
  const truth = (
    await raw(
      `query($id: ID!) { wallet(id: $id) { transactions(first: 100) {
         edges { node { id } } pageInfo { hasNextPage } } } }`,
      { id: walletId },
      token,
    )
  ).wallet.transactions;
  assert.equal(truth.pageInfo.hasNextPage, false, "more than 100 transactions: use a fresh wallet");
  const expected = truth.edges.map((e) => e.node.id);
  assert.ok(expected.length >= 5, `pagination needs at least 5 transactions, the wallet has ${expected.length}`);
  assert.ok(expected.includes(tx.id), "pagination: the ground truth lacks the new deposit");

  // A watched query, as a component would hold it: it must show the merged list.
  const history = apollo.watchQuery({
    query: HISTORY,
    variables: { id: walletId, first: 2 },
    fetchPolicy: "network-only",
  });
  const shown = [];
  let watchError;
  const watching = history.subscribe({
    next: (result) => shown.push(result),
    error: (e) => (watchError = e),
  });
  const latest = (what, test) =>
    until(what, () => {
      if (watchError) throw new Error(`apollo watched query failed: ${watchError.message}`);
      const result = shown.at(-1);
      return result && !result.loading && test(result) ? result : undefined;
    });
  let pages = 1;
  try {
    const firstPage = await latest("apollo first page", (r) => r.data?.wallet);
    assert.equal(firstPage.errors, undefined, "apollo first page: errors");
    let page = firstPage.data.wallet.transactions;
    assert.equal(page.edges.length, 2, "apollo first page: edges");
    assert.equal(page.pageInfo.hasNextPage, true, "apollo first page: hasNextPage");
    while (page.pageInfo.hasNextPage) {
      assert.ok(pages < 60, "apollo pagination: hasNextPage never became false");
      const more = await within(
        10_000,
        `apollo page ${pages + 1}`,
        history.fetchMore({ variables: { after: page.pageInfo.endCursor } }),
      );
      assert.equal(more.errors, undefined, `apollo page ${pages + 1}: errors`);
      page = more.data.wallet.transactions;
      assert.ok(page.edges.length <= 2, `apollo page ${pages + 1}: ${page.edges.length} edges for first: 2`);
      pages += 1;
    }
    assert.equal(pages, Math.ceil(expected.length / 2), "apollo pagination: number of pages");
    const merged = apollo.readQuery({ query: HISTORY, variables: { id: walletId, first: 2 } });
    const mergedIds = merged.wallet.transactions.edges.map((e) => e.node.id);
    assert.equal(new Set(mergedIds).size, mergedIds.length, `apollo pagination: duplicates in ${mergedIds}`);
    assert.deepEqual(mergedIds, expected, "apollo pagination: the cache's merged list (in order)");
    assert.equal(merged.wallet.transactions.pageInfo.hasNextPage, false, "apollo pagination: merged hasNextPage");
    const watched = await latest(
      "apollo watched query with every page",
      (r) => r.data?.wallet?.transactions.edges.length >= expected.length,
    ).catch((e) => {
      throw new Error(`${e.message}; it showed ${JSON.stringify(shown.at(-1)?.data)}`);
    });
    assert.deepEqual(
      watched.data.wallet.transactions.edges.map((e) => e.node.id),
      expected,
      "apollo pagination: the watched query's list",
    );
    assert.equal(watched.data.wallet.transactions.pageInfo.hasNextPage, false, "apollo pagination: watched hasNextPage");
  } finally {
    watching.unsubscribe();
  }

  // A subscription over GraphQLWsLink, receiving a deposit made after subscribing.
  const received = [];
  let subscriptionError;
  const subscription = apollo
    .subscribe({
      query: gql`
        subscription Updates($walletId: ID) {
          transactionUpdated(walletId: $walletId) {
            id
            type
            amount
            status
            walletId
          }
        }
      `,
      variables: { walletId },
    })
    .subscribe({
      next: (result) => {
        if (result.errors) subscriptionError = result.errors;
        else received.push(result.data.transactionUpdated);
      },
      error: (e) => (subscriptionError = e),
    });
  let event, deposits;
  try {
    ({ event, deposits } = await depositUntilSeen(
      "apollo",
      apolloWsEvents,
      async (idempotencyKey) => {
        const r = await within(
          10_000,
          "apollo deposit",
          apollo.mutate({
            mutation: DEPOSIT,
            variables: { input: { walletId, amount: "7.77", idempotencyKey } },
            context: asOperator,
          }),
        );
        return r.data.deposit;
      },
      () => {
        if (subscriptionError)
          throw new Error(
            `apollo subscription failed: ${JSON.stringify(subscriptionError?.message ?? subscriptionError)} ` +
              `(socket: ${apolloWsEvents.join("; ")})`,
          );
        return received;
      },
    ));
    assert.equal(event.amount, "7.77", "apollo subscription: amount");
    assert.equal(event.type, "DEPOSIT", "apollo subscription: type");
    assert.equal(event.walletId, walletId, "apollo subscription: walletId");
  } finally {
    subscription.unsubscribe();
  }
  return `apollo: query, mutation, ${pages} pages merged, an event after ${deposits} deposit(s)`;
}

// ---------------------------------------------------------------------------------------
// urql
// ---------------------------------------------------------------------------------------

const urqlWsEvents = [];
const urqlWs = wsClient("urql", urqlWsEvents);
// The methods urql used (it sends queries as GET when the URL is short enough).
const urqlMethods = [];
const urql = new UrqlClient({
  url: httpUrl,
  fetch: (url, init) => {
    urqlMethods.push(init?.method ?? "GET");
    return fetch(url, init);
  },
  fetchOptions: () => ({ headers: { authorization: `Bearer ${token}` } }),
  requestPolicy: "network-only",
  // As urql's documentation sets it up: the document cache, fetch, subscriptions.
  exchanges: [
    cacheExchange,
    fetchExchange,
    subscriptionExchange({
      forwardSubscription(request) {
        const input = { ...request, query: request.query || "" };
        return {
          subscribe(sink) {
            return { unsubscribe: urqlWs.subscribe(input, sink) };
          },
        };
      },
    }),
  ],
});

async function urqlChecks() {
  const query = await within(
    10_000,
    "urql query",
    urql
      .query(
        urqlGql`
          query Wallet($id: ID!) {
            currencies { code scale }
            wallet(id: $id) {
              id currency balance
              transactions(first: 3) { edges { cursor node { id type amount } } pageInfo { hasNextPage endCursor } }
            }
          }
        `,
        { id: walletId },
      )
      .toPromise(),
  );
  assert.equal(query.error, undefined, `urql query: ${query.error}`);
  assert.ok(query.data.currencies.some((c) => c.code === "USD"), "urql query: no USD");
  assert.equal(query.data.wallet.id, walletId, "urql query: wallet.id");
  assert.equal(query.data.wallet.transactions.edges.length, 3, "urql query: 3 transactions");
  assert.equal(query.data.wallet.transactions.pageInfo.hasNextPage, true, "urql query: hasNextPage");
  assert.deepEqual(urqlMethods, ["GET"], "urql query: the HTTP methods used");

  // A mutation as the user: refused, the code where urql puts GraphQL errors.
  const refused = await within(
    10_000,
    "urql refused mutation",
    urql
      .mutation(
        urqlGql`mutation Deposit($input: DepositInput!) { deposit(input: $input) { id } }`,
        { input: { walletId, amount: "1.00", idempotencyKey: `urql-${Date.now()}-user` } },
      )
      .toPromise(),
  );
  assert.equal(
    refused.error?.graphQLErrors?.[0]?.extensions?.code,
    "FORBIDDEN",
    `urql mutation: a user's deposit: ${refused.error}`,
  );
  assert.equal(urqlMethods.at(-1), "POST", "urql mutation: the HTTP method");

  const received = [];
  let subscriptionError;
  const subscription = urql
    .subscription(
      urqlGql`
        subscription Updates($walletId: ID) {
          transactionUpdated(walletId: $walletId) { id type amount status walletId }
        }
      `,
      { walletId },
    )
    .subscribe((result) => {
      if (result.error) subscriptionError = result.error;
      else if (result.data) received.push(result.data.transactionUpdated);
    });
  let event, deposits;
  try {
    ({ event, deposits } = await depositUntilSeen(
      "urql",
      urqlWsEvents,
      async (idempotencyKey) => {
        // The operator's deposit through urql too: per-operation fetchOptions.
        const r = await within(
          10_000,
          "urql deposit",
          urql
            .mutation(
              urqlGql`
                mutation Deposit($input: DepositInput!) { deposit(input: $input) { id type amount } }
              `,
              { input: { walletId, amount: "3.21", idempotencyKey } },
              { fetchOptions: asOperator },
            )
            .toPromise(),
        );
        assert.equal(r.error, undefined, `urql deposit: ${r.error}`);
        return r.data.deposit;
      },
      () => {
        if (subscriptionError)
          throw new Error(`urql subscription failed: ${subscriptionError} (socket: ${urqlWsEvents.join("; ")})`);
        return received;
      },
    ));
    assert.equal(event.amount, "3.21", "urql subscription: amount");
    assert.equal(event.type, "DEPOSIT", "urql subscription: type");
    assert.equal(event.walletId, walletId, "urql subscription: walletId");
  } finally {
    subscription.unsubscribe();
  }
  return `urql: query (GET), refused mutation, an event after ${deposits} deposit(s)`;
}

try {
  const apolloSummary = await apolloChecks();
  const urqlSummary = await urqlChecks();
  const troubles = cacheComplaints();
  if (troubles.length > 0) fail(`Apollo's cache complained:\n${troubles.join("\n")}`);
  if (complaints.length > 0) console.log(`(client warnings, not fatal: ${complaints.length})`);
  await Promise.all([apolloWs.dispose(), urqlWs.dispose()]);
  apollo.stop();
  console.log(`${apolloSummary}; ${urqlSummary}`);
  console.log("apollo and urql work");
  process.exit(0);
} catch (e) {
  fail(e instanceof assert.AssertionError ? `${e.message}\n${e.stack}` : e?.stack ?? String(e));
}
