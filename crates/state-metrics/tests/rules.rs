//! The shipped alert rules and dashboard: valid for Prometheus's own tool, unit-tested
//! with `promtool test rules`, and referring only to metrics this crate emits.

use std::path::{Path, PathBuf};

use state_metrics::names::{self, MetricKind};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn promtool(dir: &Path, args: &[&str]) {
    testing::services::promtool(dir, args, None).unwrap_or_else(|e| panic!("{e}"));
}

/// Every `state_…` metric name in `text`.
fn referenced(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("state_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // A name, not the end of a longer word (`my_state_x`).
        let starts_word = rest[..at]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if starts_word {
            found.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    found
}

/// Whether `name` is a series this crate emits (histograms as `_bucket`, `_sum`,
/// `_count`) or one the alert rules record.
fn known(name: &str, recorded: &[String]) -> bool {
    recorded.iter().any(|r| r == name)
        || names::METRICS.iter().any(|m| {
            m.name == name
                || (m.kind == MetricKind::Histogram
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(m.name)))
        })
}

fn recorded_by_rules(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|r| r.trim().to_string())
        .collect()
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    let dir = crate_dir().join("prometheus");
    promtool(&dir, &["check", "rules", "alerts.yml"]);
    promtool(&dir, &["test", "rules", "alerts_test.yml"]);
}

#[test]
fn rules_and_dashboard_refer_only_to_emitted_metrics() {
    let rules = std::fs::read_to_string(crate_dir().join("prometheus/alerts.yml"))
        .unwrap_or_else(|e| panic!("alerts.yml: {e}"));
    let recorded = recorded_by_rules(&rules);
    assert_eq!(recorded, ["state_cache_hit_rate"]);
    let dashboard = std::fs::read_to_string(crate_dir().join("grafana/dashboard.json"))
        .unwrap_or_else(|e| panic!("dashboard.json: {e}"));
    // Comments may name the crate (`state_metrics::names`): only rules count.
    let rules_only: String = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for (file, text) in [("alerts.yml", &rules_only), ("dashboard.json", &dashboard)] {
        let names = referenced(text);
        assert!(!names.is_empty(), "{file} names no metric");
        for name in names {
            assert!(
                known(&name, &recorded),
                "{file} refers to {name}, which nothing emits"
            );
        }
    }
}

#[test]
fn every_dashboard_expression_is_valid_promql() {
    let text = std::fs::read_to_string(crate_dir().join("grafana/dashboard.json"))
        .unwrap_or_else(|e| panic!("dashboard.json: {e}"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("dashboard.json: {e}"));
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        // Grafana's variable, as Grafana would fill it for "All".
        .map(|e| e.replace("$backend", ".*"))
        .collect();
    assert!(exprs.len() >= 8, "{exprs:?}");
    // Each expression as a recording rule: `promtool check rules` parses every one.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let quoted = serde_json::to_string(expr).unwrap_or_default();
        rules.push_str(&format!(
            "      - record: dashboard_panel_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    std::fs::write(dir.path().join("dashboard_rules.yml"), rules)
        .unwrap_or_else(|e| panic!("cannot write the rules: {e}"));
    promtool(dir.path(), &["check", "rules", "dashboard_rules.yml"]);
}
