//! Reports people would rather look at: reliability diagrams, confidence histograms per level, a
//! Table-1-style Markdown table, and one self-contained HTML page. Plain values in, files' bytes out.
pub mod evidence;
pub mod grounding;
pub mod intervals;
pub mod page;
pub mod plots;
pub mod roles;
pub mod vision;
