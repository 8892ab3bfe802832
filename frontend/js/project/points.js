// What the learning curve plots, read from rounds and evaluations. Depends on nothing.

const numberOrNull = (x) => (typeof x === "number" ? x : null);

/**
 * The labels a round's proxy trained on and its accuracy on the test split, from its metrics
 * (empty until the round has selected; the accuracy is null without a labelled test split).
 */
export function roundPoint(r) {
  return { labels: numberOrNull(r.metrics.labeled), acc: numberOrNull(r.metrics.proxy_test_accuracy) };
}

/** The labels a succeeded evaluation trained the target on and its test accuracy. */
export function evaluationPoint(job) {
  return { labels: job.result.labels, acc: job.result.accuracy };
}
