//! How CLI commands print, one way for all: `-o table` (aligned columns
//! for people), `-o wide` (the same with the columns a command keeps for
//! when there is room), `-o json` and `-o yaml` (the command's data, for
//! scripts). A command builds its data once (`Serialize`) and a [`Table`];
//! [`OutputArgs::emit`] picks.

use std::io::Write as _;

use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Wide,
    Json,
    Yaml,
}

/// The `-o` flag every command that prints results takes.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct OutputArgs {
    /// How to print: aligned columns, the same with more columns, or the
    /// data as JSON or YAML.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

impl OutputArgs {
    /// Prints `data` when a format for scripts was asked for, and says
    /// whether it did; otherwise the caller prints for people.
    pub fn data<T: serde::Serialize + ?Sized>(&self, data: &T) -> anyhow::Result<bool> {
        match self.output {
            Output::Json => outln!("{}", serde_json::to_string_pretty(data)?),
            Output::Yaml => out!("{}", serde_yaml_ng::to_string(data)?),
            Output::Table | Output::Wide => return Ok(false),
        }
        Ok(true)
    }

    /// Prints `data` for scripts, or `table` for people.
    pub fn emit<T: serde::Serialize + ?Sized>(&self, data: &T, table: Table) -> anyhow::Result<()> {
        if !self.data(data)? {
            table.print(self.output == Output::Wide);
        }
        Ok(())
    }
}

/// Rows under headers; the columns after `wide` headers show with `-o wide` only.
pub struct Table {
    headers: Vec<String>,
    /// How many columns show without `-o wide`.
    narrow: usize,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            narrow: headers.len(),
            rows: Vec::new(),
        }
    }

    /// Adds columns shown only with `-o wide`; rows give their cells last.
    pub fn wide(mut self, headers: &[&str]) -> Self {
        self.headers.extend(headers.iter().map(|h| h.to_string()));
        self
    }

    pub fn rows(mut self, rows: Vec<Vec<String>>) -> Self {
        self.rows = rows;
        self
    }

    pub fn print(&self, wide: bool) {
        let columns = if wide {
            self.headers.len()
        } else {
            self.narrow
        };
        let headers: Vec<&str> = self.headers[..columns].iter().map(String::as_str).collect();
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().take(columns).cloned().collect())
            .collect();
        print_table(&headers, &rows);
    }
}

/// Prints `rows` under `headers`, each column as wide as its widest cell.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut out = Vec::new();
    write_table(&mut out, headers, rows);
    out!("{}", String::from_utf8_lossy(&out));
}

/// The same table, written into `out`.
pub fn write_table(out: &mut Vec<u8>, headers: &[&str], rows: &[Vec<String>]) {
    use std::io::Write as _;
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells.zip(&widths).map(|(c, w)| format!("{c:w$}")).collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// Writes a command's output (see `outln!`): a closed pipe ends the process
/// with success, any other failure to write with an error.
pub fn write_out(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                stdout.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("weft: cannot write the output: {e}");
            std::process::exit(1);
        }
    }
}
