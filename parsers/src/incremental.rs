//! Parsing a body as it arrives, chunk by chunk, so the largest admin answer (text `/clusters`,
//! ~40 MB at 5,000 clusters) never has to be held whole.

use crate::ParseError;

/// A parser fed with the chunks of a body in order.
pub trait Incremental: Send {
    type Output;

    /// Takes the next chunk. An error stops the read early (garbage is detected at its first line).
    fn feed(&mut self, chunk: &[u8]) -> Result<(), ParseError>;

    /// The body ended.
    fn finish(self) -> Result<Self::Output, ParseError>;
}

/// Splits chunks into lines (`\n`, with an optional `\r` before it), keeping only an incomplete
/// last line between chunks. Line numbers start at 1.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    line_no: usize,
}

impl LineSplitter {
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        mut each: impl FnMut(usize, &[u8]) -> Result<(), ParseError>,
    ) -> Result<(), ParseError> {
        while let Some(end) = memchr::memchr(b'\n', chunk) {
            self.line_no += 1;
            if self.partial.is_empty() {
                each(self.line_no, trim_cr(&chunk[..end]))?;
            } else {
                self.partial.extend_from_slice(&chunk[..end]);
                each(self.line_no, trim_cr(&self.partial))?;
                self.partial.clear();
            }
            chunk = &chunk[end + 1..];
        }
        self.partial.extend_from_slice(chunk);
        Ok(())
    }

    /// The last line, when the body did not end with a newline.
    pub fn finish(
        &mut self,
        mut each: impl FnMut(usize, &[u8]) -> Result<(), ParseError>,
    ) -> Result<(), ParseError> {
        if self.partial.is_empty() {
            return Ok(());
        }
        self.line_no += 1;
        let line = std::mem::take(&mut self.partial);
        each(self.line_no, trim_cr(&line))
    }
}

/// A line-oriented format: one call per line, then the result.
pub trait LineFormat: Default + Send {
    type Output;

    fn line(&mut self, line_no: usize, line: &[u8]) -> Result<(), ParseError>;

    fn done(self) -> Self::Output;
}

/// The [`Incremental`] parser of a [`LineFormat`].
#[derive(Debug, Default)]
pub struct LineParser<F> {
    splitter: LineSplitter,
    format: F,
}

impl<F: LineFormat> Incremental for LineParser<F> {
    type Output = F::Output;

    fn feed(&mut self, chunk: &[u8]) -> Result<(), ParseError> {
        let format = &mut self.format;
        self.splitter.feed(chunk, |n, line| format.line(n, line))
    }

    fn finish(mut self) -> Result<F::Output, ParseError> {
        let format = &mut self.format;
        self.splitter.finish(|n, line| format.line(n, line))?;
        Ok(self.format.done())
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Collects the whole body, then parses it: for small bodies in formats that need all of it
/// (`/certs` JSON).
pub struct Buffered<T> {
    body: Vec<u8>,
    parse: fn(&[u8]) -> Result<T, ParseError>,
}

impl<T> Buffered<T> {
    pub fn new(parse: fn(&[u8]) -> Result<T, ParseError>) -> Buffered<T> {
        Buffered {
            body: Vec::new(),
            parse,
        }
    }
}

impl<T> Incremental for Buffered<T> {
    type Output = T;

    fn feed(&mut self, chunk: &[u8]) -> Result<(), ParseError> {
        self.body.extend_from_slice(chunk);
        Ok(())
    }

    fn finish(self) -> Result<T, ParseError> {
        (self.parse)(&self.body)
    }
}

/// Parses a body that is already whole.
pub fn parse_whole<P: Incremental + Default>(body: &[u8]) -> Result<P::Output, ParseError> {
    let mut parser = P::default();
    parser.feed(body)?;
    parser.finish()
}

/// Feeds `body` in pieces of `size` bytes: what a chunked HTTP body looks like to a parser.
pub fn feed_in_chunks<P: Incremental>(
    mut parser: P,
    body: &[u8],
    size: usize,
) -> Result<P::Output, ParseError> {
    for chunk in body.chunks(size.max(1)) {
        parser.feed(chunk)?;
    }
    parser.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]]) -> Vec<(usize, String)> {
        let mut splitter = LineSplitter::default();
        let mut seen = Vec::new();
        for chunk in chunks {
            splitter
                .feed(chunk, |n, l| {
                    seen.push((n, String::from_utf8(l.to_vec()).unwrap()));
                    Ok(())
                })
                .unwrap();
        }
        splitter
            .finish(|n, l| {
                seen.push((n, String::from_utf8(l.to_vec()).unwrap()));
                Ok(())
            })
            .unwrap();
        seen
    }

    #[test]
    fn lines_split_across_chunks_are_joined_and_numbered() {
        let expected = vec![
            (1, "ab".to_string()),
            (2, "cd".to_string()),
            (3, "".to_string()),
            (4, "e".to_string()),
        ];
        assert_eq!(lines_of(&[b"ab\ncd\r\n\ne"]), expected);
        assert_eq!(lines_of(&[b"a", b"b\nc", b"d\r", b"\n", b"\ne"]), expected);
    }
}
