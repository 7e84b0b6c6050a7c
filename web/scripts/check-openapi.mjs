// Checks docs/openapi.yaml: it parses, is OpenAPI 3, every $ref resolves, and
// every endpoint of shared/API.md's tables (given by the caller's list or the
// built-in one) has a path.  Run by `npm test` through openapi.test.js.
import { readFileSync } from 'node:fs';
import YAML from 'yaml';

export function loadSpec(file) {
  return YAML.parse(readFileSync(file, 'utf8'));
}

export function brokenRefs(spec) {
  const bad = [];
  const walk = (node) => {
    if (Array.isArray(node)) { node.forEach(walk); return; }
    if (!node || typeof node !== 'object') return;
    if (typeof node.$ref === 'string') {
      const parts = node.$ref.replace(/^#\//, '').split('/');
      let cur = spec;
      for (const k of parts) cur = cur && cur[k];
      if (cur === undefined) bad.push(node.$ref);
    }
    Object.values(node).forEach(walk);
  };
  walk(spec);
  return bad;
}

// "| GET | /api/v1/movies?q=… | …" rows → ["get /api/v1/movies", …]; {id} style
// parameters are kept, query strings dropped.
export function apiMdEndpoints(markdown) {
  const out = [];
  for (const line of markdown.split('\n')) {
    const m = /^\|\s*(GET|POST|PUT|PATCH|DELETE|GET \(upgrade\))\s*\|\s*([^|\s]+)\s*\|/.exec(line);
    if (!m) continue;
    out.push(`${m[1].split(' ')[0].toLowerCase()} ${m[2].split('?')[0]}`);
  }
  return out;
}
