// Whether the proxy's guess for an image is pre-selected (Enter accepts it) or only shown as a
// hint. The linear proxy's probabilities are temperature-calibrated on held-out labels, so a
// guess at PRESELECT_AT or above is right at least as often as not; a weaker one would put a
// likely-wrong answer one keystroke from being accepted, so it needs a class key instead.
// Depends on nothing.

export const PRESELECT_AT = 0.5;

/** `{label, confidence, preselected}` for an entry's suggestion, or null when it has none. */
export function guessOf(entry) {
  const s = entry && entry.suggestion;
  if (!s || !s.label) return null;
  const confidence = typeof s.confidence === "number" ? s.confidence : null;
  return { label: s.label, confidence, preselected: confidence === null || confidence >= PRESELECT_AT };
}
