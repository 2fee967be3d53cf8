// Octokit (@octokit/rest, whose routes come from @octokit/plugin-rest-endpoint-methods and whose
// URLs are built by @octokit/endpoint) making the calls below with a capturing `fetch`.
// Prints every request Octokit handed to fetch as JSON:
// [{"call": NAME, "method": M, "url": U, "headers": {..}, "body": TEXT|null}, ...].
// The capturing fetch answers 200 with a small JSON document; nothing leaves the process.
//
// Run by tests/libraries.rs; needs `npm ci --prefix tests/libraries`.

import { Octokit } from "@octokit/rest";
import { endpoint } from "@octokit/endpoint";

const captured = [];
let current = null;

async function capturingFetch(url, init = {}) {
  const headers = {};
  for (const [k, v] of new Headers(init.headers ?? {})) headers[k] = v;
  captured.push({
    call: current,
    method: init.method ?? "GET",
    url: String(url),
    headers,
    body: init.body == null ? null : String(init.body),
  });
  return new Response('{"ok":true}', {
    status: 200,
    headers: { "content-type": "application/json; charset=utf-8" },
  });
}

const octokit = new Octokit({
  auth: "agentgate-placeholder-github",
  request: { fetch: capturingFetch },
});

const calls = [
  ["repos.delete", () => octokit.rest.repos.delete({ owner: "Acme", repo: "API" })],
  [
    "issues.create",
    () =>
      octokit.rest.issues.create({
        owner: "acme",
        repo: "api",
        title: "Found a bug",
        body: "Steps:\n1. run `make`\n2. it fails",
        labels: ["bug", "p1"],
        assignees: ["octocat"],
      }),
  ],
  [
    "repos.addCollaborator",
    () =>
      octokit.rest.repos.addCollaborator({
        owner: "acme",
        repo: "api",
        username: "mallory",
        permission: "admin",
      }),
  ],
  [
    "repos.getBranch",
    () => octokit.rest.repos.getBranch({ owner: "acme", repo: "api", branch: "feature/x" }),
  ],
  [
    "git.updateRef",
    () =>
      octokit.rest.git.updateRef({
        owner: "acme",
        repo: "api",
        ref: "heads/release/v1",
        sha: "0123456789abcdef0123456789abcdef01234567",
        force: true,
      }),
  ],
  [
    "repos.deleteBranchProtection",
    () =>
      octokit.rest.repos.deleteBranchProtection({
        owner: "acme",
        repo: "api",
        branch: "release/v1",
      }),
  ],
  [
    "pulls.list",
    () =>
      octokit.rest.pulls.list({
        owner: "acme",
        repo: "api",
        state: "closed",
        base: "main",
        per_page: 100,
        page: 2,
      }),
  ],
  [
    "repos.createOrUpdateFileContents",
    () =>
      octokit.rest.repos.createOrUpdateFileContents({
        owner: "acme",
        repo: "api",
        path: "docs/a b/readme.md",
        message: "docs: readme",
        content: Buffer.from("# hello\n").toString("base64"),
        branch: "feature/x",
      }),
  ],
  [
    "repos.createWebhook",
    () =>
      octokit.rest.repos.createWebhook({
        owner: "acme",
        repo: "api",
        config: { url: "https://hooks.example/h", content_type: "json" },
        events: ["push", "pull_request"],
      }),
  ],
  [
    "graphql",
    () =>
      octokit.graphql(
        `mutation ($id: ID!) { removed: deleteRef(input: {refId: $id}) { clientMutationId } }`,
        { id: "REF_kwDOA" },
      ),
  ],
  [
    "graphql.query",
    () => octokit.graphql(`query { viewer { login } }`),
  ],
];

for (const [name, run] of calls) {
  current = name;
  await run();
}

// The bare URL builder as well: what @octokit/endpoint makes of a path with a slash and a space.
const contents = endpoint("GET /repos/{owner}/{repo}/contents/{path}", {
  owner: "acme",
  repo: "api",
  path: "docs/a b/readme.md",
  ref: "feature/x",
});
captured.push({
  call: "endpoint.getContent",
  method: contents.method,
  url: contents.url,
  headers: contents.headers,
  body: null,
});

process.stdout.write(JSON.stringify(captured));
