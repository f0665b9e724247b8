// Loads a running TensorBoard in headless Chromium (playwright-core driving the system's
// browser) and prints what a reviewer sees, as JSON: the Custom Scalars charts (title and
// the series each one draws) and the Images page's pictures (tag and natural size).
// Screenshots of both pages go to OUT_DIR.
//   node tests/browser/tensorboard_pages.js URL CHROMIUM OUT_DIR
const { chromium } = require('playwright-core');

const [url, executablePath, outDir] = process.argv.slice(2);

async function customScalars(page) {
  await page.goto(`${url}/#custom_scalars`);
  const cards = page.locator('tf-custom-scalar-multi-line-chart-card');
  await cards.first().waitFor({ timeout: 60000 });
  await page.locator('.match-list-entry').first().waitFor({ state: 'attached', timeout: 60000 });
  await page.waitForTimeout(2000); // the line charts finish drawing
  await page.screenshot({ path: `${outDir}/custom_scalars.png` });
  return cards.evaluateAll((els) => els.map((el) => {
    const heading = el.shadowRoot.querySelector('tf-card-heading');
    const text = (root) => Array.from(root.childNodes)
      .filter((n) => n.nodeName !== 'STYLE').map((n) => n.textContent).join(' ');
    return {
      title: text(heading.shadowRoot || heading).replace(/\s+/g, ' ').trim(),
      series: Array.from(el.shadowRoot.querySelectorAll('.match-list-entry')).map((e) => e.childNodes[e.childNodes.length - 1].textContent.trim()),
    };
  }));
}

async function images(page) {
  await page.goto(`${url}/#images`);
  const loaders = page.locator('tf-image-loader');
  await loaders.first().waitFor({ timeout: 60000 });
  await page.getByText('Show actual image size').click(); // the grid at its own size, not shrunk to the card
  await page.waitForFunction(() => {
    const imgs = [];
    const walk = (root) => root.querySelectorAll('*').forEach((el) => {
      if (el.tagName === 'IMG') imgs.push(el);
      if (el.shadowRoot) walk(el.shadowRoot);
    });
    walk(document);
    return imgs.length > 0 && imgs.every((img) => img.complete && img.naturalWidth > 0);
  }, null, { timeout: 60000 });
  await page.screenshot({ path: `${outDir}/images.png`, fullPage: true });
  return loaders.evaluateAll((els) => els.map((el) => {
    const img = el.shadowRoot.querySelector('img');
    const heading = el.shadowRoot.querySelector('tf-card-heading');
    const root = heading.shadowRoot || heading;
    const text = Array.from(root.childNodes).filter((n) => n.nodeName !== 'STYLE').map((n) => n.textContent).join(' ');
    return {
      heading: text.replace(/\s+/g, ' ').trim(),
      width: img ? img.naturalWidth : 0,
      height: img ? img.naturalHeight : 0,
    };
  }));
}

(async () => {
  const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1800, height: 1100 } });
    const result = { customScalars: await customScalars(page), images: await images(page) };
    console.log(JSON.stringify(result));
  } finally {
    await browser.close();
  }
})().catch((err) => { console.error(err); process.exit(1); });
