// End-to-end test of the studio in headless Chromium (Debian's chromium, driven by playwright-core):
// sign up, apply an edit in the Playground and see the post-edit answer and probes, launch a benchmark run and watch
// it finish live, run on the workspace's own cases, run the α and ζ ablations and see their charts, invite and accept a
// teammate, open the leaderboard charts and its reference rows (the committed results), open run pages, explore UniKE's
// knowledge spaces with an edit highlighted, and open a demo sandbox. Screenshots go to tests/artifacts/.
//
// Usage: node tests/e2e/studio.mjs <unike binary>   (run by `./studio test` after the front end is built)
import { createRequire } from 'node:module';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// playwright-core lives in the repository's tool folder (.tools/node_modules), installed by `./studio setup`.
const { chromium } = createRequire(join(process.cwd(), '.tools', 'package.json'))('playwright-core');
const bin = process.argv[2];
const artifacts = 'tests/artifacts';
mkdirSync(artifacts, { recursive: true });

function check(cond, msg) {
  if (!cond) throw new Error(`check failed: ${msg}`);
}

// Starts `unike serve` on a free port with a fresh database; resolves to { url, child }.
function serve(extra = []) {
  const db = join(mkdtempSync(join(tmpdir(), 'unike-e2e-')), 'studio.db');
  const child = spawn(bin, ['serve', '--addr', '127.0.0.1:0', '--db', `sqlite://${db}`, ...extra], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    let log = '';
    const timer = setTimeout(() => reject(new Error(`server did not start: ${log}`)), 120000);
    child.stderr.on('data', (d) => {
      log += d;
      const m = log.match(/http:\/\/(127\.0\.0\.1:\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve({ url: `http://${m[1]}`, child });
      }
    });
    child.on('exit', (code) => reject(new Error(`server exited ${code}: ${log}`)));
  });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
const servers = [];
try {
  const { url, child } = await serve();
  servers.push(child);
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  page.setDefaultTimeout(60000);

  // Sign up.
  await page.goto(`${url}/signin`);
  await page.fill('#username', 'e2e-user');
  await page.fill('#password', 'e2e password');
  await page.click('#signup');
  await page.waitForURL(`${url}/playground`);
  await page.screenshot({ path: `${artifacts}/01-playground.png`, fullPage: true });

  // Pick the first gallery image (fills question and target), ask, apply, see the post-edit answer.
  await page.click('.gallery .thumb >> nth=0');
  const target = await page.inputValue('#target');
  check(target.length > 0, 'the gallery fills the target');
  await page.click('#ask');
  const before = (await page.textContent('#answer')) ?? '';
  check(!before.includes(target), `the unedited model does not answer the target already (${before})`);
  await page.selectOption('#method', 'serac');
  await page.click('#apply');
  await page.waitForSelector('#edit-result');
  const after = (await page.textContent('#after'))?.trim();
  check(after === target, `post-edit answer ${after} is the target ${target}`);
  // The probes are listed, each marked pass or fail; the edit question itself passes.
  const probes = await page.locator('#edit-result tbody tr').allTextContents();
  check(probes.length >= 5, `probe rows: ${probes.length}`);
  check(probes.every((p) => /pass$|fail$/.test(p.trim())), `every probe is marked: ${probes}`);
  check(probes[0].includes('Edit question') && probes[0].trim().endsWith('pass'), `the edit question passes: ${probes[0]}`);
  // The inspector: the expected answer's probability before → after, the API's numbers; the edit raised the target's.
  const joint = ((await page.textContent('#edit-result tbody tr >> nth=0 >> .joint')) ?? '').split('→').map(parseFloat);
  const ws = (await (await page.request.get(`${url}/api/workspaces`)).json())[0].id;
  const stack = await (await page.request.get(`${url}/api/workspaces/${ws}/edits`)).json();
  const tokens = stack.edits[stack.edits.length - 1].probes[0].tokens;
  const prod = (k) => tokens.reduce((p, t) => p * t[k], 1);
  const close = (shown, want) => Math.abs(shown - want) <= 0.0005 + 0.05 * want;
  check(tokens.length >= 2 && close(joint[0], prod('before')) && close(joint[1], prod('after')),
    `the inspector shows the API's probabilities: ${joint} vs ${prod('before')} → ${prod('after')}`);
  check(prod('after') > prod('before'), `the edit raised the target's probability (${prod('before')} → ${prod('after')})`);
  // SERAC's scope score: the edit question is in scope (its counterfactual model answered it), as the page says.
  const scope = stack.edits[stack.edits.length - 1].probes[0].scope;
  check(scope && scope.score >= scope.threshold, `the edit question is in SERAC's scope: ${JSON.stringify(scope)}`);
  check(((await page.textContent('#edit-result tbody tr >> nth=0 >> .scope')) ?? '').includes(scope.score.toFixed(3)),
    'the page shows the scope score');
  // SERAC's counterfactual context: the edit as a demonstration, listed as the API has it.
  const demos = stack.edits[stack.edits.length - 1].demonstrations;
  check(demos.length === 1 && demos[0].includes(target), `SERAC's context holds the edit: ${demos}`);
  check(((await page.textContent('.demonstrations')) ?? '').includes(demos[0]), 'the page lists the demonstration');
  // The probe table fits its card at 1280 px: no column is cut off.
  const cut = await page.evaluate(() => {
    const t = document.querySelector('#edit-result table');
    return t.scrollWidth - t.parentElement.clientWidth;
  });
  check(cut <= 1, `the probe table fits its card (${cut} px too wide)`);
  await page.waitForSelector('#stack li');
  await page.click('#ask');
  await page.waitForFunction((t) => document.querySelector('#answer')?.textContent.includes(t), target);
  await page.screenshot({ path: `${artifacts}/02-edit-applied.png`, fullPage: true });

  // A benchmark run, watched live to the end.
  await page.click('a[href="/benchmarks"]');
  // T-Patcher and SERAC (UniKE's memory may still be building on a fresh clone).
  await page.getByLabel('unike', { exact: true }).uncheck();
  await page.getByLabel('serac', { exact: true }).check();
  // `none` (the unedited model) fails every edit: the run page must list failing cases.
  await page.getByLabel('none', { exact: true }).check();
  await page.click('button[type=submit]');
  await page.waitForSelector('.run progress');
  const newestFinished = (label) =>
    page.waitForFunction(
      (l) =>
        document.querySelector('.run h3')?.textContent.includes(l) &&
        document.querySelector('.run .run-status')?.textContent.startsWith('finished'),
      label,
      { timeout: 600000 },
    );
  await newestFinished('serac');
  await page.screenshot({ path: `${artifacts}/03-run-finished.png`, fullPage: true });

  // The run's own page: request, results with their chart, and the cases, failing ones first.
  await page.click('.run h3 a >> nth=0');
  await page.waitForURL(/\/runs\/\d+$/);
  await page.waitForSelector('#run-request');
  await page.waitForSelector('#run-chart svg');
  check(((await page.textContent('#run-status')) ?? '').startsWith('finished'), 'the run page shows the status');
  await page.selectOption('#case-method', 'none');
  await page.waitForSelector('#run-cases tbody tr.case.failed');
  const firstFailed = (await page.textContent('#run-cases tbody tr.case >> nth=0 >> .failed-probes')) ?? '';
  check(firstFailed.includes('reliability'), `the unedited model's first case fails reliability: ${firstFailed}`);
  const question = (await page.textContent('#run-cases tbody tr.case >> nth=0 >> td:nth-of-type(2)')) ?? '';
  check(question.includes('→'), `a case shows its question and target: ${question}`);
  // The numbers are the API's: the first listed case's reliability.
  const runId = page.url().split('/').pop();
  const api = await (await page.request.get(`${url}/api/runs/${runId}/cases?method=none`)).json();
  const shown = parseFloat((await page.textContent('#run-cases tbody tr.case >> nth=0 >> td:nth-of-type(5)')) ?? '');
  check(Math.abs(shown - api.cases[0].reliability) < 0.051, `reliability ${shown} is the API's ${api.cases[0].reliability}`);
  // The case's answer before → after the edit, as reliability reads it (the API's).
  const answers = (await page.textContent('#run-cases tbody tr.case >> nth=0 >> td.answers')) ?? '';
  check(api.cases[0].answer_after !== undefined && answers === `${api.cases[0].answer_before} → ${api.cases[0].answer_after}`,
    `the case's answers are the API's: ${answers} vs ${api.cases[0].answer_before} → ${api.cases[0].answer_after}`);
  await page.screenshot({ path: `${artifacts}/08-run-page.png`, fullPage: true });
  await page.click('a[href="/benchmarks"]');
  await page.waitForSelector('#run-data');

  // A run on the workspace's own cases (the edit applied above): private to the workspace, and marked so.
  await page.selectOption('#run-data', 'workspace');
  await page.click('button[type=submit]');
  await newestFinished('workspace cases');
  check(/n=1 /.test((await page.textContent('.run h3')) ?? ''), 'the run evaluates the one workspace case');

  // The fixed-α and ζ ablations (builds UniKE's memory on a fresh clone, ~3 minutes on 2 cores).
  await page.selectOption('#run-data', 'world');
  await page.click('#preset-alpha');
  check((await page.inputValue('#extra-methods')).includes('unike:alpha=0.2'), 'the α preset fills the variants');
  await page.fill('#extra-methods', 'unike:alpha=0.2 unike:alpha=1 unike:zeta-none unike:intrinsic+latent');
  await page.getByLabel('Cases (n)').fill('3');
  await page.click('button[type=submit]');
  await newestFinished('unike:intrinsic+latent');

  // The knowledge-space explorer (Fig. 5a): a UniKE edit of the workspace, then the memory in three spaces with the
  // edit highlighted in each, a click on the edit drawing its retrieval as the API has it, the search, the phone.
  await page.goto(`${url}/playground`);
  await page.click('.gallery .thumb >> nth=1');
  await page.selectOption('#method', 'unike');
  const stackBefore = await page.locator('#stack li').count();
  await page.click('#apply');
  await page.waitForFunction((n) => document.querySelectorAll('#stack li').length > n, stackBefore, { timeout: 180000 });
  const unikeEdit = (await (await page.request.get(`${url}/api/workspaces/${ws}/edits`)).json()).edits.at(-1);
  check(unikeEdit.method === 'unike', `the newest edit is UniKE's: ${unikeEdit.method}`);
  // The inspector lists the knowledge each probe retrieves, as the API has it.
  const ret = unikeEdit.probes[0].retrieved ?? [];
  check(ret.length > 0, 'UniKE\'s edit question lists its retrieved knowledge');
  const retShown = (await page.textContent('#edit-result tbody tr >> nth=0 >> .retrieved li >> nth=0')) ?? '';
  check(retShown.includes(ret[0].score.toFixed(3)) && retShown.includes(ret[0].question),
    `the inspector lists the API's retrieval: ${retShown} vs ${JSON.stringify(ret[0])}`);
  await page.click('a[href="/explorer"]');
  // The first t-SNE fit of a layer (the debug build this test runs is slow at it; cached after).
  await page.waitForSelector('.space-panel circle.edit', { timeout: 300000 });
  const ex = await (await page.request.get(`${url}/api/explorer?workspace=${ws}`)).json();
  const spaces = await page.locator('.space-panel').evaluateAll((els) =>
    els.map((e) => [e.dataset.space, e.querySelectorAll('circle.pt').length, e.querySelectorAll('circle.edit').length]));
  check(spaces.length === 3 && spaces.every(([name, n, edits], i) => name === ex.spaces[i].space &&
    n === ex.spaces[i].points.length && edits === 1), `the explorer draws the API's points and the edit: ${JSON.stringify(spaces)}`);
  check(((await page.textContent('#explorer-facts')) ?? '').includes(`${ex.sampled} of ${ex.memory_size}`), 'the page says what it sampled');
  await page.screenshot({ path: `${artifacts}/10-explorer.png`, fullPage: true });
  await page.click('.space-panel[data-space=truthful] circle.edit');
  await page.waitForSelector('#explorer-focus tbody tr');
  const fx = await (await page.request.get(`${url}/api/explorer?workspace=${ws}&focus=e:${unikeEdit.id}`)).json();
  const focusRows = await page.locator('#explorer-focus tbody tr').allTextContents();
  check(fx.focus && focusRows.length === fx.focus.links.length && focusRows[0].startsWith(fx.focus.links[0].score.toFixed(3)),
    `the focus lists the API's retrieval: ${focusRows.length} rows, ${focusRows[0]} vs ${JSON.stringify(fx.focus?.links[0])}`);
  const linkLines = await page.locator('.space-panel[data-space=raw] line.link').count();
  check(linkLines === fx.focus.links.length, `every retrieved entry is linked: ${linkLines} of ${fx.focus.links.length}`);
  await page.screenshot({ path: `${artifacts}/10b-explorer-focus.png`, fullPage: true });
  await page.fill('#explorer-search', 'how many');
  await page.waitForSelector('.explorer-found li button');
  await page.setViewportSize({ width: 390, height: 844 });
  const exOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  const widths = await page.locator('.space-panel').evaluateAll((els) => els.map((e) => e.getBoundingClientRect().width));
  check(exOverflow <= 1 && widths.every((w) => w > 300), `the explorer stacks on a phone: ${exOverflow} px, ${widths}`);
  await page.screenshot({ path: `${artifacts}/11-explorer-phone.png`, fullPage: true });
  await page.setViewportSize({ width: 1280, height: 1000 });

  // The leaderboard with its chart.
  await page.click('a[href="/leaderboard"]');
  await page.waitForSelector('.chart-bars svg');
  await page.waitForSelector('#leaderboard tbody tr.result');
  const rows = await page.locator('#leaderboard tbody tr.result').count();
  check(rows >= 2, `leaderboard rows: ${rows}`);
  await page.screenshot({ path: `${artifacts}/04-leaderboard.png`, fullPage: true });
  await page.waitForSelector('#chart-sweep-0 svg');
  await page.waitForSelector('#chart-zeta-0 svg');
  check(((await page.textContent('#chart-sweep-0')) ?? '').includes('fixed α'), 'the α sweep chart is labelled');
  check(
    !((await page.textContent('#leaderboard')) ?? '').includes('workspace'),
    'runs on workspace cases stay off the public leaderboard',
  );
  await page.locator('#chart-sweep-0').screenshot({ path: `${artifacts}/04b-alpha-sweep.png` });
  await page.locator('#chart-zeta-0').screenshot({ path: `${artifacts}/04c-zeta.png` });
  // Sorting: a header button sorts (and keeps the keyboard focus), a second press reverses; the sort is in the URL.
  await page.focus('#sort-reliability');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('#sort-reliability')?.closest('th')?.getAttribute('aria-sort') === 'descending');
  check(page.url().includes('sort=reliability') && page.url().includes('dir=desc'), `sorted URL: ${page.url()}`);
  check(await page.evaluate(() => document.activeElement?.id === 'sort-reliability'), 'the sort button keeps the focus');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('#sort-reliability')?.closest('th')?.getAttribute('aria-sort') === 'ascending');
  const rel = await page.locator('#leaderboard tbody tr.result td:nth-of-type(7)').allTextContents();
  const relNums = rel.map((t) => parseFloat(t));
  check(relNums.every((v, i) => i === 0 || relNums[i - 1] <= v), `reliability ascending: ${rel}`);
  // A filter picked on the page (a method name holding '+') is a shareable link that keeps filter and sort (this
  // studio's runs only: the committed reference results hold the same method).
  await page.goto(`${url}/leaderboard?source=studio&sort=reliability&dir=asc`);
  await page.waitForSelector('#leaderboard tbody tr.result');
  await page.selectOption('#filter-method', 'unike:intrinsic+latent');
  await page.waitForFunction(() => location.search.includes('method=unike%3Aintrinsic%2Blatent'));
  await page.waitForFunction(() => document.querySelectorAll('#leaderboard tbody tr.result').length === 1);
  const share = await page.getAttribute('#share-link', 'href');
  check(share.includes('sort=reliability'), `the shareable link keeps the sort: ${share}`);
  await page.goto(`${url}${share}`);
  await page.waitForSelector('#leaderboard tbody tr.result');
  check((await page.locator('#leaderboard tbody tr.result').count()) === 1, 'the shared link applies its filter');
  check(
    ((await page.textContent('#leaderboard tbody tr.result th')) ?? '') === 'unike:intrinsic+latent',
    'the shared link shows the filtered method',
  );
  await page.goto(`${url}/leaderboard?method=serac&source=studio`);
  await page.waitForSelector('#leaderboard tbody tr.result');
  check((await page.locator('#leaderboard tbody tr.result').count()) === 1, 'the method filter from the URL applies');

  // A fresh studio's leaderboard starts with the project's committed results, labelled as reference rows; their
  // run pages open for anyone.
  await page.goto(`${url}/leaderboard?source=reference&task=vqa&mode=one-step`);
  await page.waitForSelector('#leaderboard tbody tr.result');
  const refRows = await page.locator('#leaderboard tbody tr.result').count();
  check(refRows >= 15, `reference rows (one-step VQA): ${refRows}`);
  check(
    (await page.locator('#leaderboard tbody tr.result .badge.reference').count()) === refRows,
    'every reference row is labelled',
  );
  const refMethods = await page.locator('#leaderboard tbody tr.result th').allTextContents();
  for (const m of ['wise', 'grace', 'memit', 'alphaedit', 'lora', 'ft-vision', 'unike', 'serac']) {
    check(refMethods.includes(m), `the reference rows hold ${m}`);
  }
  await page.screenshot({ path: `${artifacts}/04d-leaderboard-reference.png`, fullPage: true });
  const anon = await (await browser.newContext()).newPage();
  anon.setDefaultTimeout(60000);
  const refHref = await page.getAttribute('#leaderboard tbody tr.result >> nth=0 >> a', 'href');
  await anon.goto(`${url}${refHref}`);
  await anon.waitForSelector('#run-chart svg');
  check(((await anon.textContent('h1')) ?? '').includes('reference'), 'a reference run page says so');
  check(((await anon.textContent('#run-request')) ?? '').includes('commit'), 'and names its commit');
  await anon.screenshot({ path: `${artifacts}/09-run-reference.png`, fullPage: true });
  await anon.close();

  // Page after page of the app (each with its live connection) keeps answering: connections of pages left are
  // closed (a browser keeps six per host on HTTP/1.1).
  for (let i = 0; i < 5; i++) {
    for (const href of ['/playground', '/benchmarks', '/workspaces']) {
      await page.click(`a[href="${href}"]`);
      await page.waitForURL(`${url}${href}`);
    }
  }
  await page.click('a[href="/playground"]');
  await page.waitForSelector('#stack li', { timeout: 15000 });

  // Invitations: the owner invites a teammate, who sees the invitation and accepts it.
  const mate = await (await browser.newContext()).newPage();
  mate.setDefaultTimeout(60000);
  await mate.goto(`${url}/signin`);
  await mate.fill('#username', 'e2e-mate');
  await mate.fill('#password', 'e2e password');
  await mate.click('#signup');
  await mate.waitForURL(`${url}/playground`);
  await page.goto(`${url}/workspaces`);
  await page.fill('#invitee', 'e2e-mate');
  await page.click('form:has(#invitee) button[type=submit]');
  await page.waitForSelector('#pending li');
  await mate.reload();
  await mate.waitForSelector('#invitation-count');
  check((await mate.textContent('#invitation-count')) === '1', 'the header counts the pending invitation');
  await mate.click('a[href="/workspaces"]');
  await mate.waitForSelector('#my-invitations li');
  await mate.click('#my-invitations button:has-text("Accept")');
  await mate.waitForFunction(() =>
    [...document.querySelectorAll('.status')].some((e) => e.textContent.includes('You joined')),
  );
  // The count goes once the invitation is answered (waited for: it follows a refetch).
  await mate.waitForFunction(() => !document.querySelector('#invitation-count'), null, { timeout: 15000 });
  await page.reload();
  await page.waitForFunction(() => document.querySelector('#members')?.textContent.includes('e2e-mate'));
  await page.screenshot({ path: `${artifacts}/05-workspace-members.png`, fullPage: true });
  await page.goto(`${url}/leaderboard`);
  await page.waitForSelector('#leaderboard');

  // Phone-sized layout renders the same page, without sideways scrolling of the page itself.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForSelector('.chart-bars svg');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `the phone layout does not scroll sideways (${overflow} px too wide)`);
  await page.screenshot({ path: `${artifacts}/06-leaderboard-phone.png`, fullPage: true });

  // Demo mode: a visitor gets a sandbox without signing up.
  const demo = await serve(['--demo']);
  servers.push(demo.child);
  const visitor = await browser.newPage();
  visitor.setDefaultTimeout(60000);
  await visitor.goto(`${demo.url}/playground`);
  await visitor.waitForSelector('.gallery .thumb');
  check(((await visitor.textContent('.site-header')) ?? '').includes('Demo sandbox'), 'the header names the sandbox');
  await visitor.screenshot({ path: `${artifacts}/07-demo-sandbox.png`, fullPage: true });
  console.log('e2e: all checks passed; screenshots in tests/artifacts/');
} catch (e) {
  // What every open page showed when the test failed.
  let i = 0;
  for (const ctx of browser.contexts()) {
    for (const p of ctx.pages()) {
      await p.screenshot({ path: `${artifacts}/failure-${i++}.png`, fullPage: true }).catch(() => {});
    }
  }
  throw e;
} finally {
  await browser.close();
  for (const s of servers) s.kill();
}
