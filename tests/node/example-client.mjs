// The example web client (examples/web-client, served at /examples/web-client/) as a
// user meets it, in headless Chromium: with nothing but 127.0.0.1 reachable, sign in with
// a token, open a wallet, see its newest transactions first, page to the older ones, and
// see a deposit made meanwhile (through the API) appear at the top with the new balance.
// Run by tests/browser.rs with WALLET_URL, WALLET_TOKEN (the wallet's owner),
// WALLET_OPERATOR, WALLET_ID (a wallet with seven deposits of 1.00 … 7.00) and
// WALLET_SCREENSHOT (written on failure).
import { offlinePage } from "./offline-browser.mjs";

const base = process.env.WALLET_URL;
const token = process.env.WALLET_TOKEN;
const operator = process.env.WALLET_OPERATOR;
const walletId = process.env.WALLET_ID;
const screenshot = process.env.WALLET_SCREENSHOT || "example-client-failure.png";

const { browser, page, offsite } = await offlinePage({ width: 1000, height: 800 });
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(String(e)));

/** The amounts of the transaction rows, top to bottom. */
const amounts = () =>
  page.$$eval("#transactions tr td.amount", (cells) => cells.map((c) => c.textContent));

async function expectAmounts(expected, what) {
  await page
    .waitForFunction(
      (expected) =>
        JSON.stringify([...document.querySelectorAll("#transactions td.amount")].map((c) => c.textContent)) ===
        JSON.stringify(expected),
      expected,
      { timeout: 15000 },
    )
    .catch(async () => {
      throw new Error(`${what}: expected ${expected.join(" ")}, shown ${(await amounts()).join(" ")}`);
    });
}

try {
  await page.goto(`${base}/examples/web-client`);
  await page.fill("#token", `Bearer ${token}`);
  await page.click("#sign-in button[type=submit]");
  await page.click(`#wallets button[data-wallet="${walletId}"]`, { timeout: 15000 });
  if (await page.isVisible("#sign-in")) throw new Error("the sign-in form is still shown");

  // Newest first, one page of five; then the two older ones.
  await expectAmounts(["7.00", "6.00", "5.00", "4.00", "3.00"], "newest page");
  await page.waitForSelector("#older", { state: "visible" });
  await page.click("#older");
  await expectAmounts(["7.00", "6.00", "5.00", "4.00", "3.00", "2.00", "1.00"], "older page");
  await page.waitForSelector("#older", { state: "hidden" });
  if ((await page.textContent("#balance")) !== "28.00") throw new Error("balance is not 28.00");

  // Live: the subscription is open once the indicator says so; a deposit then shows.
  await page.waitForSelector("#live.on", { timeout: 15000 });
  const response = await fetch(`${base}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${operator}` },
    body: JSON.stringify({
      query: `mutation($w: ID!, $k: String!) {
        deposit(input: {walletId: $w, amount: "8.00", idempotencyKey: $k}) { id } }`,
      variables: { w: walletId, k: `example-client-${Date.now()}` },
    }),
  });
  const body = await response.json();
  if (body.errors) throw new Error(`deposit failed: ${JSON.stringify(body.errors)}`);
  await expectAmounts(
    ["8.00", "7.00", "6.00", "5.00", "4.00", "3.00", "2.00", "1.00"],
    "after a live deposit",
  );
  await page.waitForFunction(
    (id) =>
      document.querySelector("#balance").textContent === "36.00" &&
      document.querySelector(`#wallets button[data-wallet="${id}"]`).textContent === "USD · 36.00",
    walletId,
    { timeout: 15000 },
  );

  if (offsite.length > 0) throw new Error(`requests left the machine: ${offsite.join(", ")}`);
  if (pageErrors.length > 0) throw new Error(`errors in the page: ${pageErrors.join("; ")}`);
  // To look at the page: WALLET_SCREENSHOT_OK=/tmp/example.png cargo test --test browser
  if (process.env.WALLET_SCREENSHOT_OK) {
    await page.screenshot({ path: process.env.WALLET_SCREENSHOT_OK, fullPage: true });
  }
  console.log("example client: sign-in, wallets, pages and live updates all work offline");
} catch (e) {
  await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  console.error(`example client browser test failed (screenshot: ${screenshot}):`, e);
  process.exitCode = 1;
} finally {
  await browser.close();
}
