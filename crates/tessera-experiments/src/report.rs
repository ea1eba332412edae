//! Markdown helpers for reports: tables with aligned numeric columns.

/// A Markdown table under construction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    header: Vec<String>,
    numeric: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers; columns whose header starts with `#` are numeric
    /// (right-aligned; the `#` is dropped).
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.trim_start_matches('#').to_string()).collect(),
            numeric: header.iter().map(|h| h.starts_with('#')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are left empty, extra cells dropped).
    pub fn row(&mut self, cells: Vec<String>) -> &mut Self {
        let mut cells = cells;
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
        self
    }

    /// The table as Markdown.
    pub fn to_markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = format!(
            "| {} |\n|",
            self.header.iter().map(|h| esc(h)).collect::<Vec<_>>().join(" | ")
        );
        for &num in &self.numeric {
            out.push_str(if num { "---:|" } else { "---|" });
        }
        out.push('\n');
        for r in &self.rows {
            out.push_str(&format!(
                "| {} |\n",
                r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_escaped_markdown() {
        let mut t = Table::new(&["model", "#top-1"]);
        t.row(vec!["a|b".into(), "0.99".into()]).row(vec!["c".into()]);
        assert_eq!(t.to_markdown(), "| model | top-1 |\n|---|---:|\n| a\\|b | 0.99 |\n| c |  |\n");
    }
}
