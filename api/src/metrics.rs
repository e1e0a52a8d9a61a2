//! Prometheus metrics in the text exposition format: HTTP requests and latencies by route,
//! method and status, GraphQL errors by contract code, and the background workers' states
//! ([`render_workers`]).
//!
//! A small registry of our own keeps the set of series fixed by construction (routes are the
//! matched route templates, never raw paths, so a scan of random URLs cannot blow up the
//! cardinality).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default, Debug)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default, Debug)]
struct Series {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<(String, String), Histogram>,
    graphql_errors: BTreeMap<String, u64>,
}

#[derive(Default, Debug)]
pub struct Metrics {
    series: Mutex<Series>,
}

impl Metrics {
    pub fn record_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let mut series = self.lock();
        *series
            .requests
            .entry((route.to_owned(), method.to_owned(), status))
            .or_default() += 1;
        let histogram = series
            .latency
            .entry((route.to_owned(), method.to_owned()))
            .or_default();
        let seconds = elapsed.as_secs_f64();
        for (slot, bound) in histogram.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *slot += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    pub fn record_graphql_error(&self, code: &str) {
        *self
            .lock()
            .graphql_errors
            .entry(code.to_owned())
            .or_default() += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        // A panic while holding this lock leaves only counters behind: still usable.
        self.series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Renders every series in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let series = self.lock();
        let mut out = String::new();
        out.push_str(
            "# HELP milepost_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE milepost_http_requests_total counter\n");
        for ((route, method, status), count) in &series.requests {
            let _ = writeln!(
                out,
                "milepost_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {count}",
                escape(route),
                escape(method)
            );
        }
        out.push_str("# HELP milepost_http_request_duration_seconds HTTP request latency.\n");
        out.push_str("# TYPE milepost_http_request_duration_seconds histogram\n");
        for ((route, method), histogram) in &series.latency {
            let labels = format!("route=\"{}\",method=\"{}\"", escape(route), escape(method));
            for (bound, count) in LATENCY_BUCKETS.iter().zip(histogram.buckets) {
                let _ = writeln!(
                    out,
                    "milepost_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "milepost_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(
                out,
                "milepost_http_request_duration_seconds_sum{{{labels}}} {}",
                histogram.sum
            );
            let _ = writeln!(
                out,
                "milepost_http_request_duration_seconds_count{{{labels}}} {}",
                histogram.count
            );
        }
        out.push_str("# HELP milepost_graphql_errors_total GraphQL errors by extensions.code.\n");
        out.push_str("# TYPE milepost_graphql_errors_total counter\n");
        for (code, count) in &series.graphql_errors {
            let _ = writeln!(
                out,
                "milepost_graphql_errors_total{{code=\"{}\"}} {count}",
                escape(code)
            );
        }
        out
    }
}

/// The background workers as Prometheus series: `milepost_worker_state` is 1 for the state
/// each worker is in and 0 for the others (every state listed, so that a dashboard sees a
/// transition as a change of value, not a series appearing), plus its runs and failures.
pub fn render_workers(reports: &[crate::workers::WorkerReport]) -> String {
    use crate::workers::WorkerState;
    let mut out = String::new();
    out.push_str("# HELP milepost_worker_state Background worker state (1 for the current one).\n");
    out.push_str("# TYPE milepost_worker_state gauge\n");
    for report in reports {
        let worker = escape(&report.name);
        for state in WorkerState::NAMES {
            let value = u8::from(report.state.name() == state);
            let _ = writeln!(
                out,
                "milepost_worker_state{{worker=\"{worker}\",state=\"{state}\"}} {value}"
            );
        }
    }
    for (name, help, value) in [
        (
            "milepost_worker_runs_total",
            "Background worker steps that did work or failed.",
            (|r: &crate::workers::WorkerReport| r.runs) as fn(&_) -> u64,
        ),
        (
            "milepost_worker_failures_total",
            "Background worker steps that failed.",
            |r| r.failures,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for report in reports {
            let _ = writeln!(
                out,
                "{name}{{worker=\"{}\"}} {}",
                escape(&report.name),
                value(report)
            );
        }
    }
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.record_request("/graphql", "POST", 200, Duration::from_millis(3));
        metrics.record_request("/graphql", "POST", 200, Duration::from_millis(300));
        metrics.record_request("/graphql", "POST", 400, Duration::from_millis(1));
        metrics.record_graphql_error("BAD_INPUT");
        let text = metrics.render();
        assert!(text.contains(
            r#"milepost_http_requests_total{route="/graphql",method="POST",status="200"} 2"#
        ));
        assert!(text.contains(
            r#"milepost_http_requests_total{route="/graphql",method="POST",status="400"} 1"#
        ));
        assert!(text.contains(r#"milepost_http_request_duration_seconds_bucket{route="/graphql",method="POST",le="0.005"} 2"#));
        assert!(text.contains(r#"milepost_http_request_duration_seconds_bucket{route="/graphql",method="POST",le="+Inf"} 3"#));
        assert!(text.contains(r#"milepost_graphql_errors_total{code="BAD_INPUT"} 1"#));
    }

    #[test]
    fn renders_worker_states_runs_and_failures() {
        use crate::workers::{WorkerReport, WorkerState};
        let text = render_workers(&[
            WorkerReport {
                name: "sync".to_owned(),
                state: WorkerState::Failed("bucket \"x\" unreachable".to_owned()),
                last_error: Some("bucket \"x\" unreachable".to_owned()),
                runs: 3,
                failures: 1,
            },
            WorkerReport {
                name: "reservations".to_owned(),
                state: WorkerState::Idle,
                last_error: None,
                runs: 0,
                failures: 0,
            },
        ]);
        assert!(text.contains(r#"milepost_worker_state{worker="sync",state="failed"} 1"#));
        assert!(text.contains(r#"milepost_worker_state{worker="sync",state="idle"} 0"#));
        assert!(text.contains(r#"milepost_worker_state{worker="reservations",state="idle"} 1"#));
        assert!(text.contains(r#"milepost_worker_runs_total{worker="sync"} 3"#));
        assert!(text.contains(r#"milepost_worker_failures_total{worker="sync"} 1"#));
        assert!(text.contains(r#"milepost_worker_failures_total{worker="reservations"} 0"#));
        assert_eq!(
            text.matches("# TYPE milepost_worker_state gauge").count(),
            1
        );
        assert_eq!(text.matches("milepost_worker_state{").count(), 10);
    }
}
