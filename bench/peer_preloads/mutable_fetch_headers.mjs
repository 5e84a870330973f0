// Node preload (`node --import`) for the Portkey gateway in bench/overhead.py.
// @portkey-ai/gateway 1.15.2 on Node 20 answers every streamed chat completion with HTTP 500
// ("TypeError: immutable"): it builds its response around the upstream fetch() Response, whose
// headers are immutable, then appends headers to them. Giving every fetch() result headers of
// its own (a mutable copy) lets streaming work; non-streamed answers are unaffected.
const upstreamFetch = globalThis.fetch;
const UndiciResponse = globalThis.Response; // captured before the server swaps in its own class

globalThis.fetch = async function fetchWithOwnHeaders(...args) {
  const response = await upstreamFetch.apply(this, args);
  return new UndiciResponse(response.body, {
    status: response.status,
    statusText: response.statusText,
    headers: new Headers(response.headers),
  });
};
