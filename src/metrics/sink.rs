//! Where derived samples go: straight into exposition text ([`TextSink`], the scrape path), or into
//! the prometheus crate's `MetricFamily` model ([`FamiliesSink`], for tests and tools).
//!
//! The text path exists for cost: at 5,000 clusters a scrape has ~100,000 samples, and the crate's
//! model allocates two `String`s per label of each before its encoder writes them out. Writing
//! the text directly allocates nothing per sample. Both sinks receive the same calls, and the
//! tests check that the text is byte for byte what the crate's `TextEncoder` makes of the model.

use std::fmt::Write;

use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};

use super::PREFIX;

/// Receives gauge families in order: `family` starts one, `sample`s fill it. A family without
/// samples does not appear in the output.
pub trait Sink {
    fn family(&mut self, name: &'static str, help: &'static str);
    fn sample(&mut self, labels: &[(&str, &str)], value: f64);
}

/// Writes the text exposition format (0.0.4) into a `String`.
pub struct TextSink<'a> {
    out: &'a mut String,
    name: &'static str,
    /// Help of the current family until its header is written (at its first sample).
    pending_help: Option<&'static str>,
}

impl<'a> TextSink<'a> {
    pub fn new(out: &'a mut String) -> TextSink<'a> {
        TextSink {
            out,
            name: "",
            pending_help: None,
        }
    }
}

impl Sink for TextSink<'_> {
    fn family(&mut self, name: &'static str, help: &'static str) {
        self.name = name;
        self.pending_help = Some(help);
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        let out = &mut *self.out;
        if let Some(help) = self.pending_help.take() {
            out.push_str("# HELP ");
            out.push_str(PREFIX);
            out.push_str(self.name);
            out.push(' ');
            push_escaped(out, help, false);
            out.push_str("\n# TYPE ");
            out.push_str(PREFIX);
            out.push_str(self.name);
            out.push_str(" gauge\n");
        }
        out.push_str(PREFIX);
        out.push_str(self.name);
        let mut separator = '{';
        for (name, value) in labels {
            out.push(separator);
            out.push_str(name);
            out.push_str("=\"");
            push_escaped(out, value, true);
            out.push('"');
            separator = ',';
        }
        if !labels.is_empty() {
            out.push('}');
        }
        // Same float formatting as the crate's encoder (`f64::to_string`).
        let _ = writeln!(out, " {value}");
    }
}

/// Escapes as the text format requires: `\` and newline always, `"` inside label values.
fn push_escaped(out: &mut String, value: &str, quotes: bool) {
    let special = |b: u8| b == b'\\' || b == b'\n' || (quotes && b == b'"');
    if !value.bytes().any(special) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Builds the prometheus crate's model.
#[derive(Default)]
pub struct FamiliesSink {
    families: Vec<MetricFamily>,
}

impl FamiliesSink {
    /// The families that got samples (the crate's encoder refuses empty ones).
    pub fn finish(mut self) -> Vec<MetricFamily> {
        self.families.retain(|f| !f.get_metric().is_empty());
        self.families
    }
}

impl Sink for FamiliesSink {
    fn family(&mut self, name: &'static str, help: &'static str) {
        let mut family = MetricFamily::default();
        family.set_name(format!("{PREFIX}{name}"));
        family.set_help(help.to_string());
        family.set_field_type(MetricType::GAUGE);
        self.families.push(family);
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        let pairs = labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.to_string());
                pair.set_value(value.to_string());
                pair
            })
            .collect();
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        let mut metric = Metric::from_label(pairs);
        metric.set_gauge(gauge);
        self.families
            .last_mut()
            .expect("family() comes before sample()")
            .mut_metric()
            .push(metric);
    }
}
