import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { apiMdEndpoints, brokenRefs, loadSpec } from '../scripts/check-openapi.mjs';

const root = join(__dirname, '..', '..');
const spec = loadSpec(join(root, 'docs', 'openapi.yaml'));
// shared/API.md lives beside the checkout (the steering repo's shared/).
const apiMd = [join(root, '..', 'shared', 'API.md'), join(root, 'shared', 'API.md')].find(existsSync);

describe('docs/openapi.yaml', () => {
  it('is OpenAPI 3 with every $ref resolving', () => {
    expect(spec.openapi).toMatch(/^3\./);
    expect(brokenRefs(spec)).toEqual([]);
  });

  it('describes every operation with at least one response', () => {
    const ops = Object.entries(spec.paths).flatMap(([p, item]) => Object.entries(item)
      .filter(([m]) => ['get', 'post', 'put', 'patch', 'delete'].includes(m)).map(([m, op]) => [`${m} ${p}`, op]));
    expect(ops.length).toBeGreaterThan(30);
    for (const [name, op] of ops) {
      expect(Object.keys(op.responses || {}), name).not.toHaveLength(0);
      expect(op.summary, name).toBeTruthy();
    }
  });

  it.skipIf(!apiMd)('has a path for every endpoint of API.md (skipped: API.md not found beside the checkout)', () => {
    const want = apiMdEndpoints(readFileSync(apiMd, 'utf8'));
    expect(want.length).toBeGreaterThan(30);
    const missing = want.filter((e) => { const [m, p] = e.split(' '); return !(spec.paths[p] && spec.paths[p][m]); });
    expect(missing).toEqual([]);
  });
});
