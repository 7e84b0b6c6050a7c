// Bundles the API documentation page into dist/api-docs/: swagger-ui-dist's
// static files (from node_modules, no CDN) and docs/openapi.yaml.  nginx
// serves it at /api/docs/.
import { copyFileSync, mkdirSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const web = join(here, '..');
const out = join(web, 'dist', 'api-docs');
const ui = join(web, 'node_modules', 'swagger-ui-dist');
const spec = join(web, '..', 'docs', 'openapi.yaml');

mkdirSync(out, { recursive: true });
for (const f of ['swagger-ui.css', 'swagger-ui-bundle.js', 'swagger-ui-standalone-preset.js', 'LICENSE']) {
  copyFileSync(join(ui, f), join(out, f));
}
if (!existsSync(spec)) throw new Error(`missing ${spec}`);
copyFileSync(spec, join(out, 'openapi.yaml'));
// The initializer is a file of its own so a CSP without 'unsafe-inline' allows it.
writeFileSync(join(out, 'init.js'), `window.addEventListener('load', function () {
  window.ui = SwaggerUIBundle({
    url: './openapi.yaml', dom_id: '#swagger-ui', deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: 'StandaloneLayout', validatorUrl: null, tryItOutEnabled: false,
  });
});
`);
writeFileSync(join(out, 'index.html'), `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>cinematch API</title>
  <link rel="stylesheet" href="./swagger-ui.css">
  <style>body{margin:0} .swagger-ui .topbar{display:none}</style>
</head>
<body>
  <div id="swagger-ui"></div>
  <noscript>The API description is at <a href="./openapi.yaml">openapi.yaml</a>.</noscript>
  <script src="./swagger-ui-bundle.js"></script>
  <script src="./swagger-ui-standalone-preset.js"></script>
  <script src="./init.js"></script>
</body>
</html>
`);
console.log(`api docs: ${out}`);
