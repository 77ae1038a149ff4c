// Headless Chromium (Debian's package, or $CHROMIUM) with one page that may reach
// 127.0.0.1 only: every request or websocket to another host is aborted and recorded in
// `offsite`, so a test can assert that a page works without internet access.
import { chromium } from "playwright-core";

export async function offlinePage(viewport = { width: 1400, height: 900 }) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu"],
  });
  const page = await browser.newPage({ viewport });
  const offsite = [];
  await page.route("**/*", (route) => {
    const url = new URL(route.request().url());
    if (url.hostname === "127.0.0.1") return route.continue();
    offsite.push(url.href);
    return route.abort();
  });
  page.on("websocket", (ws) => {
    if (new URL(ws.url()).hostname !== "127.0.0.1") offsite.push(ws.url());
    if (process.env.WALLET_DEBUG) {
      ws.on("framesent", (f) => console.log("ws >", f.payload));
      ws.on("framereceived", (f) => console.log("ws <", f.payload));
      ws.on("close", () => console.log("ws closed"));
    }
  });
  return { browser, page, offsite };
}
