//! The report's text: a Table-1-style Markdown table and a self-contained HTML page (inline SVG).
use std::fmt::Write;

/// One metrics row (level `all`, `perception` or `reasoning`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow {
    pub variant: String,
    pub split: String,
    pub level: String,
    pub responses: u64,
    pub sentences: u64,
    pub ece: Option<f64>,
    pub mece: Option<f64>,
    /// Step-level Brier score (MECE's averaging, squared error).
    pub brier: Option<f64>,
    pub accuracy: Option<f64>,
    pub chain_f1: Option<f64>,
    pub auroc: Option<f64>,
}

/// One judged sentence of an example chain.
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleSentence {
    pub sentence: String,
    pub statement: Option<String>,
    pub confidence: Option<f64>,
    pub correct: bool,
}

fn cell(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into())
}

/// A metric of a level-`all` row, with its column label and, where it has bootstrap intervals, which.
type Column = (&'static str, fn(&MetricsRow) -> Option<f64>, Option<crate::report::intervals::Metric>);

/// One row per variant and, per split, one cell per column (level `all`); the first column of a split is
/// labelled with the split's name. A cell with an estimate in `cells` shows its interval.
fn per_split_table(
    rows: &[MetricsRow],
    splits: &[String],
    variants: &[String],
    columns: &[Column],
    cells: &crate::report::intervals::Cells,
) -> String {
    let mut s = String::from("| variant |");
    for sp in splits {
        for (i, (name, _, _)) in columns.iter().enumerate() {
            let label = match (i, name.is_empty()) {
                (0, true) => sp.clone(),
                (0, false) => format!("{sp} {name}"),
                _ => name.to_string(),
            };
            let _ = write!(s, " {label} |");
        }
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(splits.len() * columns.len()));
    s.push('\n');
    for v in variants {
        let _ = write!(s, "| {v} |");
        for sp in splits {
            let row = rows.iter().find(|r| &r.variant == v && &r.split == sp && r.level == "all");
            for (_, metric, with_ci) in columns {
                let estimate = with_ci.and_then(|m| cells.get(&(v.clone(), sp.clone(), m)));
                let text = if estimate.is_some() { cell_ci(estimate) } else { cell(row.and_then(metric)) };
                let _ = write!(s, " {text} |");
            }
        }
        s.push('\n');
    }
    s
}

/// The paper's Table 1 layout: one row per variant, ECE / MECE / Acc / F1 / AUROC per split (level `all`).
pub fn table1_markdown(rows: &[MetricsRow], splits: &[String], variants: &[String]) -> String {
    table1_markdown_ci(rows, splits, variants, &Default::default())
}

/// [`table1_markdown`] with the intervals of `cells` in its cells.
pub fn table1_markdown_ci(rows: &[MetricsRow], splits: &[String], variants: &[String], cells: &crate::report::intervals::Cells) -> String {
    use crate::report::intervals::Metric;
    let columns: [Column; 5] = [
        ("ECE", |r| r.ece, Some(Metric::Ece)),
        ("MECE", |r| r.mece, Some(Metric::Mece)),
        ("Acc", |r| r.accuracy, Some(Metric::Accuracy)),
        ("F1", |r| r.chain_f1, None),
        ("AUROC", |r| r.auroc, Some(Metric::Auroc)),
    ];
    per_split_table(rows, splits, variants, &columns, cells)
}

/// Step-level Brier score by split (level `all`): the proper counterpart of MECE.
pub fn brier_markdown(rows: &[MetricsRow], splits: &[String], variants: &[String]) -> String {
    brier_markdown_ci(rows, splits, variants, &Default::default())
}

/// [`brier_markdown`] with the intervals of `cells` in its cells.
pub fn brier_markdown_ci(rows: &[MetricsRow], splits: &[String], variants: &[String], cells: &crate::report::intervals::Cells) -> String {
    per_split_table(rows, splits, variants, &[("", |r| r.brier, Some(crate::report::intervals::Metric::Brier))], cells)
}

/// Perception vs reasoning (the paper's Figure 4): MECE and chain F1 by chain level.
pub fn levels_markdown(rows: &[MetricsRow], split: &str, variants: &[String]) -> String {
    let mut s = String::from("| variant | perception MECE | perception F1 | reasoning MECE | reasoning F1 |\n|---|---|---|---|---|\n");
    for v in variants {
        let get = |lvl: &str| rows.iter().find(|r| &r.variant == v && r.split == split && r.level == lvl);
        let (p, r) = (get("perception"), get("reasoning"));
        let _ = writeln!(
            s,
            "| {v} | {} | {} | {} | {} |",
            cell(p.and_then(|x| x.mece)),
            cell(p.and_then(|x| x.chain_f1)),
            cell(r.and_then(|x| x.mece)),
            cell(r.and_then(|x| x.chain_f1))
        );
    }
    s
}

/// Splits in the paper's order (val, test, ood), then any others by name.
pub fn ordered_splits(rows: &[MetricsRow]) -> Vec<String> {
    let mut splits: Vec<String> = rows.iter().map(|r| r.split.clone()).collect();
    splits.sort_by_key(|s| (["val", "test", "ood"].iter().position(|o| o == s).unwrap_or(9), s.clone()));
    splits.dedup();
    splits
}

/// The sweep's ablation table: `entries` are (how to produce it, row label, its level-`all` rows relabelled
/// to the label, or None when not run or stale); rows that exist form a Table-1 and a Brier table, the
/// others are listed with the command that produces them. Cells with an estimate in `cells` (keyed by
/// row label) show its 95 % bootstrap interval.
pub fn ablation_markdown(entries: &[(String, String, Option<Vec<MetricsRow>>)], cells: &crate::report::intervals::Cells) -> String {
    variants_markdown(ABLATION_HEADING, entries, cells)
}

/// The heading of `mmb sweep`'s table.
pub const ABLATION_HEADING: &str = "Ablations (Table 1's lower half)";
/// The heading of `mmb compare`'s table.
pub const BASELINE_HEADING: &str = "Baselines (Table 1's upper half; AUROC: Table 8)";

/// [`ablation_markdown`] under any heading, with the number of items behind each cell (`mmb compare`'s
/// baselines table uses it as it is).
pub fn variants_markdown(
    heading: &str,
    entries: &[(String, String, Option<Vec<MetricsRow>>)],
    cells: &crate::report::intervals::Cells,
) -> String {
    let rows: Vec<MetricsRow> = entries.iter().filter_map(|e| e.2.clone()).flatten().collect();
    let labels: Vec<String> = entries.iter().filter(|e| e.2.is_some()).map(|e| e.1.clone()).collect();
    let splits = ordered_splits(&rows);
    let mut s = format!("# {heading}\n\nECE, MECE, accuracy, chain F1, AUROC (level `all`).");
    if !cells.is_empty() {
        s.push_str(" Brackets: 95 % bootstrap intervals over items.");
    }
    s.push_str("\n\n");
    s.push_str(&table1_markdown_ci(&rows, &splits, &labels, cells));
    s.push_str("\n## Step-level Brier score\n\n");
    s.push_str(&brier_markdown_ci(&rows, &splits, &labels, cells));
    s.push_str("\n## Items (responses) per cell\n\n");
    s.push_str(&items_markdown(&rows, &splits, &labels));
    let missing: Vec<&(String, String, Option<Vec<MetricsRow>>)> = entries.iter().filter(|e| e.2.is_none()).collect();
    if !missing.is_empty() {
        s.push_str("\nNot run yet, or stale since:\n\n");
        for (how, label, _) in missing {
            let _ = writeln!(s, "- {label}: {how}");
        }
    }
    s
}

/// What each variant computed beyond the main run (`mmb run`'s lock): `variants` holds, per variant label,
/// its stages beyond it as (stage, cache key, recorded seconds). A stage an earlier variant already computed
/// (the same key: Multisample's sampled chains reused by SaySelf) is named there and not counted again, so
/// the last row is the comparison's whole cost beyond the main run. The RL stages (`rollout_k`, `update_k`,
/// `ppo`) are one entry, "RL (k iterations)".
pub fn cost_markdown(variants: &[(String, Vec<(String, String, f64)>)]) -> String {
    let mut s = String::from("| variant | stages beyond `mmb run` (seconds) | seconds |\n|---|---|---|\n");
    let mut first: std::collections::BTreeMap<&str, &str> = Default::default();
    let mut total = 0.0;
    for (label, stages) in variants {
        // (entry, seconds, iterations, computed by an earlier variant)
        let mut parts: Vec<(String, f64, usize, Option<&str>)> = Vec::new();
        for (stage, key, seconds) in stages {
            let rl = stage == "ppo" || stage.starts_with("rollout_") || stage.starts_with("update_");
            let entry = if rl { "RL".to_string() } else { stage.clone() };
            let by = first.get(key.as_str()).copied();
            if by.is_none() {
                first.insert(key, label);
            }
            let counted = if by.is_some() { 0.0 } else { *seconds };
            let iteration = usize::from(stage.starts_with("rollout_"));
            match parts.last_mut() {
                Some(last) if rl && last.0 == entry && last.3 == by => {
                    last.1 += counted;
                    last.2 += iteration;
                }
                _ => parts.push((entry, counted, iteration, by)),
            }
        }
        let own = parts.iter().fold(0.0, |acc, p| acc + p.1);
        total += own;
        let what: Vec<String> = parts
            .iter()
            .map(|(entry, sec, its, by)| {
                let name = if entry == "RL" { format!("RL ({its} iterations)") } else { entry.clone() };
                match by {
                    Some(by) => format!("{name} (computed for {by})"),
                    None => format!("{name} {sec:.1}"),
                }
            })
            .collect();
        let what = if what.is_empty() { "none".to_string() } else { what.join(", ") };
        let _ = writeln!(s, "| {label} | {what} | {own:.1} |");
    }
    let _ = writeln!(s, "| all variants | | {total:.1} |");
    s
}

/// The number of responses (items) behind each variant's cells, by split (level `all`).
pub fn items_markdown(rows: &[MetricsRow], splits: &[String], variants: &[String]) -> String {
    let mut s = format!("| variant | {} |\n|---|{}\n", splits.join(" | "), "---|".repeat(splits.len()));
    for v in variants {
        let cells: Vec<String> = splits
            .iter()
            .map(|sp| {
                rows.iter()
                    .find(|r| &r.variant == v && &r.split == sp && r.level == "all")
                    .map_or("–".to_string(), |r| r.responses.to_string())
            })
            .collect();
        let _ = writeln!(s, "| {v} | {} |", cells.join(" | "));
    }
    s
}

/// Per variant, what MECE rewards: the share of right sentences, the mean stated confidence, and MECE and
/// the Brier score as stated and as they would be if every statement said "fully confident" (1.0).
/// `responses[variant]` holds each response's (sentence right?, stated confidence) pairs.
pub fn mece_anatomy_markdown(responses: &[(String, Vec<Vec<(bool, f64)>>)]) -> Result<String, crate::metrics::MetricsError> {
    use crate::metrics::{mece, step_brier};
    let mut s = String::from(
        "| variant | sentences | right | mean stated conf. | MECE | MECE, all 1.0 | Brier | Brier, all 1.0 |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (v, rs) in responses {
        let rs: Vec<Vec<(bool, f64)>> = rs.iter().filter(|r| !r.is_empty()).cloned().collect();
        let flat: Vec<&(bool, f64)> = rs.iter().flatten().collect();
        if flat.is_empty() {
            let _ = writeln!(s, "| {v} | 0 | – | – | – | – | – | – |");
            continue;
        }
        let n = flat.len() as f64;
        let right = flat.iter().filter(|x| x.0).count() as f64 / n;
        let mean_conf = flat.iter().map(|x| x.1).sum::<f64>() / n;
        let sure: Vec<Vec<(bool, f64)>> = rs.iter().map(|r| r.iter().map(|&(c, _)| (c, 1.0)).collect()).collect();
        let _ = writeln!(
            s,
            "| {v} | {} | {right:.3} | {mean_conf:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            flat.len(),
            mece(&rs)?,
            mece(&sure)?,
            step_brier(&rs)?,
            step_brier(&sure)?
        );
    }
    Ok(s)
}

/// A point value with its interval, "0.123 [0.100, 0.150]" ("0.123" without interval, "–" without value).
pub fn cell_ci(e: Option<&crate::report::intervals::Estimate>) -> String {
    match e {
        None => "–".into(),
        Some(e) => match e.interval {
            Some(i) => format!("{:.3} [{:.3}, {:.3}]", e.value, i.lo, i.hi),
            None => format!("{:.3}", e.value),
        },
    }
}

/// Table 1 with 95 % intervals: one row per (split, variant), the number of items and, per metric, the
/// value and its bootstrap interval (chain F1 without one: it needs the judge's similarities).
pub fn table1_ci_markdown(rows: &[MetricsRow], splits: &[String], variants: &[String], cells: &crate::report::intervals::Cells) -> String {
    use crate::report::intervals::Metric;
    let mut s =
        String::from("| split | variant | items | ECE | MECE | Brier | Acc | F1 | AUROC |\n|---|---|---|---|---|---|---|---|---|\n");
    for sp in splits {
        for v in variants {
            let Some(row) = rows.iter().find(|r| &r.variant == v && &r.split == sp && r.level == "all") else { continue };
            let c = |m: Metric| cells.get(&(v.clone(), sp.clone(), m)).map(|e| cell_ci(Some(e))).unwrap_or_else(|| cell(m.of_row(row)));
            let _ = writeln!(
                s,
                "| {sp} | {v} | {} | {} | {} | {} | {} | {} | {} |",
                row.responses,
                c(Metric::Ece),
                c(Metric::Mece),
                c(Metric::Brier),
                c(Metric::Accuracy),
                cell(row.chain_f1),
                c(Metric::Auroc)
            );
        }
    }
    s
}

/// The paired differences `a − b` per split (columns: the metrics of `diffs`, in the order given). A cell
/// whose interval excludes 0 says which variant it favors (lower is better for the calibration errors,
/// higher for accuracy and AUROC); otherwise that its interval spans 0.
pub fn differences_markdown(
    diffs: &[crate::report::intervals::Difference],
    a: &str,
    b: &str,
    metrics: &[crate::report::intervals::Metric],
) -> String {
    let mut s = String::from("| split | items |");
    for m in metrics {
        let _ = write!(s, " {} {a} − {b} |", m.name());
    }
    s.push_str("\n|---|---|");
    s.push_str(&"---|".repeat(metrics.len()));
    s.push('\n');
    let mut splits: Vec<&str> = diffs.iter().map(|d| d.split.as_str()).collect();
    splits.dedup();
    for sp in splits {
        let items = diffs.iter().find(|d| d.split == sp).map(|d| d.items).unwrap_or(0);
        let _ = write!(s, "| {sp} | {items} |");
        for m in metrics {
            let d = diffs.iter().find(|d| d.split == sp && d.metric == *m);
            let (below, above) = if m.lower_is_better() { (a, b) } else { (b, a) };
            let verdict = match d.and_then(|d| d.estimate.interval) {
                Some(i) if i.hi < 0.0 => format!(" ({below} better)"),
                Some(i) if i.lo > 0.0 => format!(" ({above} better)"),
                Some(_) => " (interval spans 0)".to_string(),
                None => String::new(),
            };
            let _ = write!(s, " {}{verdict} |", cell_ci(d.map(|d| &d.estimate)));
        }
        s.push('\n');
    }
    s
}

/// Target 4's table (`mmb sweep --seeds N`): per split and metric, each seed's `a − b` on its run, their
/// mean with the paired bootstrap interval (items resampled, the same draw for every run), and what the
/// interval says.
pub fn seeds_markdown(diffs: &[crate::report::intervals::Difference], a: &str, b: &str, seeds: &[u64]) -> String {
    let mut s = format!("| split | metric | items |");
    for k in seeds {
        let _ = write!(s, " seed {k} |");
    }
    let _ = writeln!(s, " mean {a} − {b} [95 % interval] | verdict |");
    s.push_str("|---|---|---|");
    s.push_str(&"---|".repeat(seeds.len() + 2));
    s.push('\n');
    for d in diffs {
        let _ = write!(s, "| {} | {} | {} |", d.split, d.metric.name(), d.items);
        for v in &d.per_seed {
            let _ = write!(s, " {v:+.3} |");
        }
        let (below, above) = if d.metric.lower_is_better() { (a, b) } else { (b, a) };
        let verdict = match d.estimate.interval {
            Some(i) if i.hi < 0.0 => format!("{below} better"),
            Some(i) if i.lo > 0.0 => format!("{above} better"),
            Some(_) => "interval spans 0".to_string(),
            None => "no interval".to_string(),
        };
        let _ = writeln!(s, " {} | {verdict} |", cell_ci(Some(&d.estimate)));
    }
    s
}

/// One seed run's answer accuracy (Table 1's, level `all`), statement AUROC and statement AUROC over same-role
/// pairs ([`crate::report::roles::same_role_auroc`]), by (variant, split).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeedPolicies {
    pub accuracy: std::collections::BTreeMap<(String, String), f64>,
    pub statement_auroc: std::collections::BTreeMap<(String, String), f64>,
    pub same_role_auroc: std::collections::BTreeMap<(String, String), f64>,
}

impl SeedPolicies {
    pub fn new(
        rows: &[MetricsRow],
        statements: &std::collections::BTreeMap<(String, String), crate::report::evidence::StatementAuroc>,
        roles: &crate::report::roles::RoleCells,
    ) -> Self {
        let accuracy = rows
            .iter()
            .filter(|r| r.level == "all")
            .filter_map(|r| r.accuracy.map(|a| ((r.variant.clone(), r.split.clone()), a)))
            .collect();
        let statement_auroc = statements.iter().filter_map(|(k, c)| c.auroc.map(|a| (k.clone(), a))).collect();
        let same_role_auroc = roles
            .keys()
            .map(|(v, sp, _)| (v.clone(), sp.clone()))
            .filter_map(|k| crate::report::roles::same_role_auroc(roles, &k.0, &k.1).map(|a| (k, a)))
            .collect();
        Self { accuracy, statement_auroc, same_role_auroc }
    }
}

/// Beside the differences: each policy's answer accuracy and statement AUROCs under every seed, and their
/// mean (over the seeds when every seed has one, else "–"). A row per split, policy (in `variants`' order)
/// and measure that some seed has.
pub fn seeds_policies_markdown(per_seed: &[SeedPolicies], variants: &[&str], splits: &[String], seeds: &[u64]) -> String {
    let mut s = String::from("| split | policy | measure |");
    for k in seeds {
        let _ = write!(s, " seed {k} |");
    }
    s.push_str(" mean |\n|---|---|---|");
    s.push_str(&"---|".repeat(seeds.len() + 1));
    s.push('\n');
    type Pick = fn(&SeedPolicies) -> &std::collections::BTreeMap<(String, String), f64>;
    let measures: [(&str, Pick); 3] = [
        ("accuracy", |p| &p.accuracy),
        ("statement AUROC", |p| &p.statement_auroc),
        ("statement AUROC, same-role pairs", |p| &p.same_role_auroc),
    ];
    for split in splits {
        for v in variants {
            for (name, pick) in measures {
                let key = (v.to_string(), split.clone());
                let values: Vec<Option<f64>> = per_seed.iter().map(|p| pick(p).get(&key).copied()).collect();
                if values.iter().all(Option::is_none) {
                    continue;
                }
                let _ = write!(s, "| {split} | {v} | {name} |");
                for x in &values {
                    let _ = write!(s, " {} |", cell(*x));
                }
                let mean = values.iter().copied().sum::<Option<f64>>().map(|t| t / values.len() as f64);
                let _ = writeln!(s, " {} |", cell(mean));
            }
        }
    }
    s
}

/// A Markdown pipe table (as this module writes them: one row per line, no pipes inside cells) as an
/// HTML table; text outside tables becomes paragraphs. An interval "[lo, hi]" in a cell is set smaller.
pub fn md_table_html(md: &str) -> String {
    let mut s = String::new();
    let mut in_table = false;
    let mut header_done = false;
    for line in md.lines() {
        let t = line.trim();
        if t.starts_with('|') {
            let cells: Vec<&str> = t.trim_matches('|').split('|').map(str::trim).collect();
            if cells.iter().all(|c| !c.is_empty() && c.chars().all(|ch| ch == '-' || ch == ':')) {
                continue;
            }
            if !in_table {
                s.push_str("<table>");
                in_table = true;
                header_done = false;
            }
            let tag = if header_done { "td" } else { "th" };
            s.push_str("<tr>");
            for c in cells {
                // "value [lo, hi] rest": the interval set smaller, what follows it (a verdict) as is.
                let body = match (c.find(" ["), c.find(']')) {
                    (Some(k), Some(j)) if j > k => format!(
                        "{}<span class=\"ci\">{}</span>{}",
                        escape(&c[..k]),
                        escape(&c[k..=j]),
                        if j + 1 < c.len() {
                            format!("<br><span class=\"verdict\">{}</span>", escape(c[j + 1..].trim()))
                        } else {
                            String::new()
                        }
                    ),
                    _ => escape(c),
                };
                let num = c.chars().next().is_some_and(|ch| ch.is_ascii_digit() || ch == '−' || ch == '-' || ch == '–');
                let class = if num && tag == "td" { " class=\"num\"" } else { "" };
                let _ = write!(s, "<{tag}{class}>{body}</{tag}>");
            }
            s.push_str("</tr>\n");
            header_done = true;
        } else {
            if in_table {
                s.push_str("</table>\n");
                in_table = false;
            }
            if !t.is_empty() {
                let _ = writeln!(s, "<p>{}</p>", escape(t));
            }
        }
    }
    if in_table {
        s.push_str("</table>\n");
    }
    s
}

pub fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Example chains, each statement colored by whether its sentence was right.
pub fn examples_html(examples: &[(String, Vec<ExampleSentence>)]) -> String {
    let mut s = String::new();
    for (title, sents) in examples {
        let _ = write!(s, "<div class=\"ex\"><div class=\"q\">{}</div><p>", escape(title));
        for e in sents {
            let class = if e.correct { "ok" } else { "bad" };
            let _ = write!(s, "{} ", escape(&e.sentence));
            if let Some(st) = &e.statement {
                let conf = e.confidence.map(|c| format!(" title=\"confidence {c:.2}\"")).unwrap_or_default();
                let _ = write!(s, "<span class=\"{class}\"{conf}>{}</span> ", escape(st));
            }
        }
        s.push_str("</p></div>\n");
    }
    s
}

/// The whole page: Markdown tables rendered as preformatted text next to the figures (kept dependency-free).
pub fn html_page(title: &str, sections: &[(String, String)]) -> String {
    let mut s = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}\
         pre{{background:#f6f6f6;padding:1em;overflow-x:auto}} .figs{{display:flex;flex-wrap:wrap;gap:1em}}\
         table{{border-collapse:collapse;margin:0.5em 0 1em;font-size:0.92em}}\
         th,td{{border:1px solid #ccc;padding:0.3em 0.6em;text-align:left;vertical-align:top}}\
         th{{background:#f0f0f0}} td.num{{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}}\
         tr:nth-child(even) td{{background:#fafafa}} .ci{{color:#666;font-size:0.85em}} .verdict{{font-size:0.85em}} p.note{{color:#444;max-width:60em}}\
         .ok{{background:#d9f2d9}} .bad{{background:#f8d7d7}} .ex{{border-left:3px solid #ccc;padding-left:1em;margin:1em 0}}\
         .q{{font-weight:bold}}</style></head><body><h1>{t}</h1>\n",
        t = escape(title)
    );
    for (h, body) in sections {
        let _ = write!(s, "<h2>{}</h2>\n{body}\n", escape(h));
    }
    s.push_str("</body></html>\n");
    s
}

/// Markdown tables inside HTML.
pub fn pre(md: &str) -> String {
    format!("<pre>{}</pre>", escape(md))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_counts_a_stage_shared_by_two_variants_once() {
        let s = |st: &str, k: &str, sec: f64| (st.to_string(), k.to_string(), sec);
        let md = cost_markdown(&[
            ("DPV".into(), vec![s("eval_chains", "e1", 43.7), s("eval", "m1", 0.4)]),
            ("Multisample".into(), vec![s("generate", "g", 600.0), s("sft", "f", 100.0)]),
            (
                "SaySelf".into(),
                vec![
                    s("generate", "g", 600.0),
                    s("score", "c", 50.6),
                    s("rollout_0", "r0", 10.0),
                    s("update_0", "u0", 2.5),
                    s("rollout_1", "r1", 11.0),
                    s("update_1", "u1", 2.5),
                    s("ppo", "p", 0.2),
                    s("eval", "m2", 1.0),
                ],
            ),
            ("nothing new".into(), vec![]),
        ]);
        let want = "| variant | stages beyond `mmb run` (seconds) | seconds |\n|---|---|---|\n\
                    | DPV | eval_chains 43.7, eval 0.4 | 44.1 |\n\
                    | Multisample | generate 600.0, sft 100.0 | 700.0 |\n\
                    | SaySelf | generate (computed for Multisample), score 50.6, RL (2 iterations) 26.2, eval 1.0 | 77.8 |\n\
                    | nothing new | none | 0.0 |\n\
                    | all variants | | 821.9 |\n";
        assert_eq!(md, want);
    }

    fn row(v: &str, sp: &str, lvl: &str, ece: f64) -> MetricsRow {
        MetricsRow {
            variant: v.into(),
            split: sp.into(),
            level: lvl.into(),
            responses: 1,
            sentences: 2,
            ece: Some(ece),
            mece: Some(0.5),
            brier: Some(ece / 2.0),
            accuracy: None,
            chain_f1: Some(0.25),
            auroc: Some(1.0),
        }
    }

    #[test]
    fn table_has_a_row_per_variant_and_dashes_for_gaps() {
        let rows = vec![row("sft", "val", "all", 0.125), row("full", "val", "all", 0.0625), row("full", "val", "perception", 0.9)];
        let t = table1_markdown(&rows, &["val".into(), "test".into()], &["sft".into(), "full".into()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[2].starts_with("| sft | 0.125 | 0.500 | – | 0.250 | 1.000 | – |"), "{}", lines[2]);
        assert!(lines[3].contains("0.062"));
        let l = levels_markdown(&rows, "val", &["full".into()]);
        assert!(l.contains("| full | 0.500 | 0.250 | – | – |"), "{l}");
        let b = brier_markdown(&rows, &["val".into(), "test".into()], &["sft".into(), "full".into()]);
        assert_eq!(b.lines().nth(2), Some("| sft | 0.062 | – |"), "{b}");
    }

    #[test]
    fn ablation_table_lists_what_ran_and_what_did_not() {
        let entries = vec![
            ("`mmb run`".to_string(), "MMBoundary".to_string(), Some(vec![row("MMBoundary", "val", "all", 0.25)])),
            ("`mmb sweep --only no-r-cs`".to_string(), "w/o R_CS".to_string(), None),
            ("`mmb sweep --only no-mte`".to_string(), "w/o U_MTE".to_string(), Some(vec![row("w/o U_MTE", "test", "all", 0.5)])),
        ];
        let t = ablation_markdown(&entries, &Default::default());
        assert!(t.contains("| MMBoundary | 0.250 | 0.500 | – | 0.250 | 1.000 | – | – | – | – | – |"), "{t}");
        assert!(t.contains("| w/o U_MTE | – | – | – | – | – | 0.500 |"), "{t}");
        assert!(t.contains("| val ECE |") && t.contains("| test ECE |"), "{t}");
        assert!(t.contains("- w/o R_CS: `mmb sweep --only no-r-cs`") && !t.contains("| w/o R_CS |"), "{t}");
    }

    #[test]
    fn ablation_cells_carry_their_intervals() {
        use crate::metrics::bootstrap::Interval;
        use crate::report::intervals::{Cells, Estimate, Metric};
        let entries = vec![("`mmb run`".to_string(), "MMBoundary".to_string(), Some(vec![row("MMBoundary", "val", "all", 0.25)]))];
        let mut cells = Cells::new();
        let ci = Interval { lo: 0.125, hi: 0.375, defined: 10, resamples: 10 };
        cells.insert(("MMBoundary".into(), "val".into(), Metric::Ece), Estimate { value: 0.25, interval: Some(ci) });
        cells.insert(("MMBoundary".into(), "val".into(), Metric::Brier), Estimate { value: 0.125, interval: None });
        let t = ablation_markdown(&entries, &cells);
        assert!(t.contains("| MMBoundary | 0.250 [0.125, 0.375] | 0.500 | – | 0.250 | 1.000 |"), "{t}");
        assert!(t.contains("Brackets: 95 %") && t.contains("| MMBoundary | 0.125 |"), "{t}");
    }

    #[test]
    fn mece_anatomy_shows_what_always_sure_would_score() {
        // 3 of 4 sentences right, stated 0.75 throughout: MECE 0.375, Brier 0.1875; all 1.0: 0.25 and 0.25.
        let r = vec![("sft".to_string(), vec![vec![(true, 0.75), (false, 0.75)], vec![(true, 0.75), (true, 0.75)], vec![]])];
        let t = mece_anatomy_markdown(&r).unwrap();
        assert_eq!(t.lines().nth(2), Some("| sft | 4 | 0.750 | 0.750 | 0.375 | 0.250 | 0.188 | 0.250 |"), "{t}");
    }

    #[test]
    fn html_escapes_and_colors() {
        let ex = vec![(
            "Q <1>".to_string(),
            vec![ExampleSentence {
                sentence: "A & B.".into(),
                statement: Some("I am sure.".into()),
                confidence: Some(1.0),
                correct: false,
            }],
        )];
        let h = html_page("R", &[("Examples".into(), examples_html(&ex))]);
        assert!(h.contains("Q &lt;1&gt;") && h.contains("A &amp; B.") && h.contains("class=\"bad\""));
    }
}
