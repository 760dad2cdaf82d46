import { describe, expect, it } from "vitest";
import { timeAgo } from "../src/recent";

describe("time ago", () => {
  const now = Date.parse("2026-12-05T12:00:00Z");
  it("names the unit a person would", () => {
    expect(timeAgo("2026-12-05T11:59:30Z", now)).toBe("just now");
    expect(timeAgo("2026-12-05T11:55:00Z", now)).toBe("5 min ago");
    expect(timeAgo("2026-12-05T09:00:00Z", now)).toBe("3 h ago");
    expect(timeAgo("2026-12-04T10:00:00Z", now)).toBe("yesterday");
    expect(timeAgo("2026-11-30T12:00:00Z", now)).toBe("5 days ago");
  });

  it("reads a clock a little ahead, or a broken time, as just now", () => {
    expect(timeAgo("2026-12-05T12:00:05Z", now)).toBe("just now");
    expect(timeAgo("not a time", now)).toBe("just now");
  });
});
