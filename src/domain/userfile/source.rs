//! Reading a user file row by row, CSV or JSON Lines, in constant memory.
//!
//! A [`Source`] fills a reused [`Fields`] per row and says which line the row
//! started on. A row that cannot be read as a row (wrong field count, bytes that are
//! not UTF-8, a JSON line that is not an object, an unknown key) comes back as a
//! problem for that line, and reading goes on. Only what makes the rest of the file
//! unreadable is an error: reading the file, its CSV header, or a line so long it
//! cannot be a user ([`MAX_LINE_BYTES`]).

use std::io::{BufRead, Read};

use super::{Column, Fields, FileError, Format, Missing, column_list};

/// The longest line accepted. A user row is well under 1 KiB; a longer line is a
/// wrong file (or an attack), refused before it is buffered whole.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// One row read: the line it starts on, and a problem when it is not a row.
pub struct RowRead {
    pub line: u64,
    pub problem: Option<String>,
}

/// A file being read from `R`.
pub enum Source<R> {
    Csv(CsvSource<R>),
    Jsonl(JsonlSource<R>),
}

impl<R: BufRead> Source<R> {
    /// Reads `file` (its name, for messages) from `reader` and, for CSV, reads and
    /// checks the header: `missing` says which columns it must have.
    ///
    /// # Errors
    /// [`FileError::Header`].
    pub fn new(reader: R, file: &str, format: Format, missing: Missing) -> Result<Self, FileError> {
        match format {
            Format::Csv => CsvSource::new(reader, file.to_owned(), missing).map(Source::Csv),
            Format::Jsonl => Ok(Source::Jsonl(JsonlSource { reader, file: file.to_owned(), line: 0, buf: Vec::new() })),
        }
    }

    /// Reads the next row into `out`; `None` at the end of the file.
    ///
    /// # Errors
    /// [`FileError::Read`] when the file cannot be read on.
    pub fn next_row(&mut self, out: &mut Fields) -> Result<Option<RowRead>, FileError> {
        match self {
            Source::Csv(s) => s.next_row(out),
            Source::Jsonl(s) => s.next_row(out),
        }
    }
}

fn set(slot: &mut Option<String>, value: &str) {
    match slot {
        Some(s) => {
            s.clear();
            s.push_str(value);
        }
        None => *slot = Some(value.to_owned()),
    }
}

fn clear(out: &mut Fields) {
    for s in out.iter_mut().flatten() {
        s.clear();
    }
}

/// Refuses a run of more than [`MAX_LINE_BYTES`] without a line break, so that the
/// CSV parser never buffers a giant record.
struct LineLimit<R> {
    inner: R,
    since_newline: usize,
    /// Line breaks read so far: the line a too-long run is on is this plus one.
    newlines: u64,
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.since_newline = 0;
                self.newlines += 1;
            } else {
                self.since_newline += 1;
                if self.since_newline > MAX_LINE_BYTES {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "a line is longer than {} KiB: this is not a user directory file",
                            MAX_LINE_BYTES / 1024
                        ),
                    ));
                }
            }
        }
        Ok(n)
    }
}

/// CSV with a header row.
pub struct CsvSource<R> {
    reader: csv::Reader<LineLimit<R>>,
    file: String,
    /// For each file column, the column it holds.
    map: Vec<Column>,
    record: csv::ByteRecord,
}

impl<R: Read> CsvSource<R> {
    fn new(reader: R, file: String, missing: Missing) -> Result<Self, FileError> {
        let mut reader = csv::ReaderBuilder::new().flexible(true).has_headers(true).from_reader(LineLimit {
            inner: reader,
            since_newline: 0,
            newlines: 0,
        });
        let header = match reader.byte_headers() {
            Ok(h) => h.clone(),
            Err(e) => {
                let message = format!("cannot read the header row: {e}");
                return Err(FileError::Header { file, message, found: String::new() });
            }
        };
        let found = header.iter().map(String::from_utf8_lossy).collect::<Vec<_>>().join(",");
        let header_err = |message: String| FileError::Header { file: file.clone(), message, found: found.clone() };
        if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
            return Err(header_err(format!(
                "the file is empty; the first line must name the columns: {}",
                column_list()
            )));
        }
        let mut map = Vec::with_capacity(header.len());
        let mut unknown = Vec::new();
        for (i, raw) in header.iter().enumerate() {
            let raw = if i == 0 { raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw) } else { raw };
            let name = std::str::from_utf8(raw).map_err(|_| {
                // a spreadsheet's "Unicode text" export: name the encoding, not just the symptom
                let utf16 = i == 0 && (raw.starts_with(b"\xFF\xFE") || raw.starts_with(b"\xFE\xFF"));
                header_err(if utf16 {
                    "the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8 CSV".to_owned()
                } else {
                    format!("header column {} is not valid UTF-8; save the file as UTF-8", i + 1)
                })
            })?;
            match Column::from_name(name) {
                Some(c) if map.contains(&c) => return Err(header_err(format!("column {} appears twice", c.name()))),
                Some(c) => map.push(c),
                None => {
                    unknown.push(format!("{name:?}"));
                    map.push(Column::UserId) // placeholder; the error below is returned
                }
            }
        }
        if !unknown.is_empty() {
            return Err(header_err(format!(
                "unknown column(s) {}; the columns are: {}",
                unknown.join(", "),
                column_list()
            )));
        }
        let absent: Vec<&str> =
            Column::ALL.into_iter().filter(|c| missing.requires(*c) && !map.contains(c)).map(Column::name).collect();
        if !absent.is_empty() {
            return Err(header_err(format!("missing required column(s) {}", absent.join(", "))));
        }
        Ok(Self { reader, file, map, record: csv::ByteRecord::new() })
    }

    fn next_row(&mut self, out: &mut Fields) -> Result<Option<RowRead>, FileError> {
        let more = self.reader.read_byte_record(&mut self.record).map_err(|e| {
            let line = e.position().map_or(self.reader.get_ref().newlines + 1, csv::Position::line);
            let message = match e.into_kind() {
                csv::ErrorKind::Io(io) => io.to_string(),
                other => format!("{other:?}"),
            };
            FileError::Read { file: self.file.clone(), line, message }
        })?;
        if !more {
            return Ok(None);
        }
        let line = self.record.position().map_or(0, csv::Position::line);
        clear(out);
        if self.record.len() != self.map.len() {
            let problem = format!("has {} fields, the header has {}", self.record.len(), self.map.len());
            return Ok(Some(RowRead { line, problem: Some(problem) }));
        }
        for (col, raw) in self.map.iter().zip(self.record.iter()) {
            match std::str::from_utf8(raw) {
                Ok(v) => set(&mut out[*col as usize], v),
                Err(_) => {
                    let problem = format!("{}: not valid UTF-8 (save the file as UTF-8)", col.name());
                    return Ok(Some(RowRead { line, problem: Some(problem) }));
                }
            }
        }
        Ok(Some(RowRead { line, problem: None }))
    }
}

/// JSON Lines: one object per line, keys as the CSV columns; `tags` may be a list.
pub struct JsonlSource<R> {
    reader: R,
    file: String,
    line: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> JsonlSource<R> {
    /// Reads one line into `buf`, at most [`MAX_LINE_BYTES`]; `Some(false)` when it
    /// was longer (the rest is skipped), `None` at the end.
    fn read_line(&mut self) -> std::io::Result<Option<bool>> {
        self.buf.clear();
        let mut fits = true;
        let mut any = false;
        loop {
            let chunk = self.reader.fill_buf()?;
            if chunk.is_empty() {
                return Ok(any.then_some(fits));
            }
            any = true;
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if fits && self.buf.len() + take <= MAX_LINE_BYTES + 1 {
                self.buf.extend_from_slice(&chunk[..take]);
            } else {
                fits = false;
                self.buf.clear();
            }
            self.reader.consume(take);
            if done {
                return Ok(Some(fits));
            }
        }
    }

    fn next_row(&mut self, out: &mut Fields) -> Result<Option<RowRead>, FileError> {
        loop {
            let fits = self.read_line().map_err(|e| FileError::Read {
                file: self.file.clone(),
                line: self.line + 1,
                message: e.to_string(),
            })?;
            let Some(fits) = fits else { return Ok(None) };
            self.line += 1;
            let line = self.line;
            if !fits {
                let problem = format!("longer than {} KiB", MAX_LINE_BYTES / 1024);
                return Ok(Some(RowRead { line, problem: Some(problem) }));
            }
            let mut bytes = self.buf.as_slice();
            if line == 1 {
                bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            }
            let Ok(text) = std::str::from_utf8(bytes) else {
                return Ok(Some(RowRead { line, problem: Some("not valid UTF-8 (save the file as UTF-8)".into()) }));
            };
            if text.trim().is_empty() {
                continue;
            }
            clear(out);
            let problem = fill_from_json(text, out).err();
            return Ok(Some(RowRead { line, problem }));
        }
    }
}

fn fill_from_json(text: &str, out: &mut Fields) -> Result<(), String> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
    let mut unknown = Vec::new();
    let mut errors = Vec::new();
    for (key, value) in &object {
        let Some(col) = Column::from_name(key) else {
            unknown.push(format!("{key:?}"));
            continue;
        };
        let slot = &mut out[col as usize];
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => set(slot, s),
            serde_json::Value::Array(items) if col == Column::Tags => {
                let mut joined = String::new();
                for item in items {
                    match item.as_str() {
                        Some(t) => {
                            joined.push_str(t);
                            joined.push(';');
                        }
                        None => errors.push("tags: every tag must be a string".to_owned()),
                    }
                }
                set(slot, &joined);
            }
            _ => errors.push(format!("{}: must be a string or null", col.name())),
        }
    }
    if !unknown.is_empty() {
        errors.insert(0, format!("unknown field(s) {}; the fields are: {}", unknown.join(", "), column_list()));
    }
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}
