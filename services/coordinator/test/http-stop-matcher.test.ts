// OpenAI's `stop` on decoded text (http/stop-matcher.ts): the text ends
// before the first stop string, even one split across tokens; text that may
// begin one is held back while streaming, and sent once it cannot.
import { test } from "node:test";
import assert from "node:assert/strict";
import { StopMatcher } from "../src/http/stop-matcher.js";

test("a stop string split across tokens cuts the text before it; what may begin one is held back", () => {
  const m = new StopMatcher(["The end", "\n\n"]);
  assert.equal(m.push("Once upon"), "Once upon");
  assert.equal(m.push(" a time. Th"), " a time. ");
  assert.equal(m.stopped, false);
  // "The" still may begin "The end": held; "Then" cannot: sent.
  assert.equal(m.push("e"), "");
  assert.equal(m.push("n they"), "Then they");
  assert.equal(m.push(" slept. The e"), " slept. ");
  assert.equal(m.push("nd and more"), "");
  assert.equal(m.stopped, true);
  // The Result's text runs past the stop string: cut at it, nothing more to send.
  assert.deepEqual(m.finish("Once upon a time. Then they slept. The end and more text"), {
    text: "Once upon a time. Then they slept. ",
    rest: "",
  });
});

test("the earliest stop string wins; without one the whole text is sent, the held-back end at finish", () => {
  const m = new StopMatcher(["b!", "a"]);
  assert.equal(m.push("xxb"), "xx");
  assert.equal(m.push("!a"), "");
  assert.equal(m.finish("xxb!a").text, "xx");

  const none = new StopMatcher(["zz"]);
  assert.equal(none.push("abc z"), "abc ");
  assert.deepEqual(none.finish("abc z"), { text: "abc z", rest: "z" });
  assert.deepEqual(new StopMatcher([]).finish("all of it"), { text: "all of it", rest: "all of it" });
});
