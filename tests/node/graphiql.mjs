// GraphiQL as a user meets it, in headless Chromium: the page loads with nothing but
// 127.0.0.1 reachable, a token typed into the Headers tab authenticates a query, a wallet
// with its transactions, and a subscription whose event (a deposit made here, through
// the API) appears in the result pane. Run by tests/browser.rs, which starts the service
// and passes WALLET_URL, WALLET_TOKEN (the wallet's owner), WALLET_OPERATOR and
// WALLET_ID. Exits non-zero on failure, with a screenshot in WALLET_SCREENSHOT.
import { offlinePage } from "./offline-browser.mjs";

const base = process.env.WALLET_URL;
const token = process.env.WALLET_TOKEN;
const operator = process.env.WALLET_OPERATOR;
const walletId = process.env.WALLET_ID;
const screenshot = process.env.WALLET_SCREENSHOT || "graphiql-failure.png";

const { browser, page, offsite } = await offlinePage();

/** Puts text into the visible one of GraphiQL's editors under `selector` (CodeMirror
 * keeps its API on its element; typing would fight its bracket auto-closing). */
async function setEditor(selector, text) {
  await page.evaluate(
    ([selector, text]) =>
      document
        .querySelector(`${selector} .graphiql-editor:not(.hidden) .CodeMirror`)
        .CodeMirror.setValue(text),
    [selector, text],
  );
  // GraphiQL re-parses the editors after a short debounce; running before that would
  // judge the operation (query or subscription) by the previous text.
  await page.waitForTimeout(800);
}

async function run(query, expected) {
  await setEditor(".graphiql-query-editor", query);
  await page.click(".graphiql-execute-button");
  await page.waitForFunction(
    (expected) => document.querySelector(".result-window")?.innerText.includes(expected),
    expected,
    { timeout: 15000 },
  );
}

async function api(query, variables, bearer) {
  const response = await fetch(`${base}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${bearer}` },
    body: JSON.stringify({ query, variables }),
  });
  return response.json();
}

try {
  await page.goto(`${base}/`);
  await page.waitForSelector(".graphiql-container");
  // The Headers tab is open; type the token into it.
  await page.click(".graphiql-editor-tools button:has-text('Headers')");
  await setEditor(".graphiql-editor-tool", JSON.stringify({ Authorization: `Bearer ${token}` }));

  await run("{ currencies { code scale } }", '"code": "USD"');
  await run(
    `{ wallet(id: "${walletId}") { currency balance
        transactions(first: 5) { edges { node { type amount } } } } }`,
    '"amount": "5.00"',
  );

  // A subscription: GraphiQL opens the websocket with the Headers tab as connection_init.
  await setEditor(
    ".graphiql-query-editor",
    `subscription { transactionUpdated(walletId: "${walletId}") { type amount balanceAfter } }`,
  );
  await page.click(".graphiql-execute-button");
  // Deposit until the event shows (the subscription may still be starting).
  let shown = false;
  for (let attempt = 1; attempt <= 20 && !shown; attempt++) {
    const body = await api(
      `mutation($w: ID!, $k: String!) {
        deposit(input: {walletId: $w, amount: "12.34", idempotencyKey: $k}) { id } }`,
      { w: walletId, k: `browser-${Date.now()}-${attempt}` },
      operator,
    );
    if (body.errors) throw new Error(`deposit failed: ${JSON.stringify(body.errors)}`);
    shown = await page
      .waitForFunction(
        () => document.querySelector(".result-window")?.innerText.includes('"amount": "12.34"'),
        null,
        { timeout: 1000 },
      )
      .then(() => true, () => false);
  }
  if (!shown) throw new Error("the deposit never appeared in GraphiQL's result pane");
  if (offsite.length > 0) throw new Error(`requests left the machine: ${offsite.join(", ")}`);
  console.log("graphiql: page, headers, query, wallet and subscription all work offline");
} catch (e) {
  await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  console.error(`graphiql browser test failed (screenshot: ${screenshot}):`, e);
  process.exitCode = 1;
} finally {
  await browser.close();
}
