import { describe, expect, it } from "vitest";
import { matches, responseCommand, responseFilter } from "../src/proto/topics";

const SID = "00112233445566778899aabbccddeeff";

describe("topics", () => {
  it("matches + filters level by level", () => {
    expect(matches(responseFilter(SID), `session/${SID}/ice/response`)).toBe(true);
    expect(matches(responseFilter(SID), `session/${SID}/ice/request`)).toBe(false);
    expect(matches(responseFilter(SID), `session/${SID}/a/b/response`)).toBe(false);
    expect(matches("user/x/isConnected", "user/x/isConnected")).toBe(true);
    expect(matches("user/x/isConnected", "user/y/isConnected")).toBe(false);
  });
  it("finds the command of a response topic of this call only", () => {
    expect(responseCommand(`session/${SID}/goto/response`, SID)).toBe("goto");
    expect(responseCommand(`session/${"f".repeat(32)}/goto/response`, SID)).toBeNull();
    expect(responseCommand(`session/${SID}/Goto/response`, SID)).toBeNull();
  });
});
