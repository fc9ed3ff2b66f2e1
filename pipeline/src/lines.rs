//! Splits a byte stream that arrives in arbitrary chunks into lines, without ever holding more than one line.
//!
//! Request bodies are read as a stream of chunks whose boundaries fall anywhere. Complete lines inside a chunk are
//! handed out borrowed (no copy); only a line that straddles chunks is assembled in a carry buffer, and that buffer
//! never grows past the configured maximum line length: a longer line is skipped to its end and reported as
//! [`Line::TooLong`], so memory stays bounded whatever the input.

/// One line of input, as the splitter hands it out.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// The line's bytes, without the `\n` (and without a `\r` before it).
    Text(&'a [u8]),
    /// The line was longer than the limit; its `len` bytes were skipped but the first [`HEAD_BYTES`] (`head`),
    /// kept to say which line it was.
    TooLong { len: u64, head: &'a [u8] },
}

/// How many bytes of a line too long to read are kept ([`Line::TooLong`]'s `head`).
pub const HEAD_BYTES: usize = crate::rejected::MAX_TEXT_BYTES;

/// Incremental line splitter. Line numbers are 1-based and count every line, blank ones included.
#[derive(Debug)]
pub struct LineSplitter {
    max_line: usize,
    carry: Vec<u8>,
    /// Length so far of a line being skipped because it is too long.
    skipping: Option<u64>,
    /// Whether the last byte skipped was a `\r` (it belongs to the line ending, not the line).
    skipped_cr: bool,
    /// The first bytes of the line being skipped.
    skipped_head: Vec<u8>,
    next_line: u64,
}

impl LineSplitter {
    /// A splitter that rejects lines longer than `max_line` bytes (excluding the line ending).
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            max_line: max_line.max(1),
            carry: Vec::new(),
            skipping: None,
            skipped_cr: false,
            skipped_head: Vec::new(),
            next_line: 1,
        }
    }

    /// Number of lines completed so far.
    pub fn lines_seen(&self) -> u64 {
        self.next_line - 1
    }

    /// Feeds one chunk; calls `on_line(line_number, line)` for every line the chunk completes.
    pub fn feed(&mut self, mut chunk: &[u8], mut on_line: impl FnMut(u64, Line<'_>)) {
        while !chunk.is_empty() {
            match memchr::memchr(b'\n', chunk) {
                Some(nl) => {
                    let (head, rest) = (&chunk[..nl], &chunk[nl + 1..]);
                    self.complete(head, &mut on_line);
                    chunk = rest;
                }
                None => {
                    self.extend_partial(chunk);
                    return;
                }
            }
        }
    }

    /// Ends the input: a last line without a trailing newline is handed out.
    pub fn finish(&mut self, mut on_line: impl FnMut(u64, Line<'_>)) {
        if self.skipping.is_some() || !self.carry.is_empty() {
            self.complete(&[], &mut on_line);
        }
    }

    fn extend_partial(&mut self, part: &[u8]) {
        if let Some(len) = self.skipping.as_mut() {
            *len += part.len() as u64;
            self.skipped_cr = part.last() == Some(&b'\r');
            keep_head(&mut self.skipped_head, part);
        } else if self.carry.len() + part.len() > self.max_line + 1 {
            // +1 leaves room for a '\r' that the line ending may still strip.
            self.skipping = Some((self.carry.len() + part.len()) as u64);
            self.skipped_cr = part.last() == Some(&b'\r');
            self.skipped_head.clear();
            keep_head(&mut self.skipped_head, &self.carry);
            keep_head(&mut self.skipped_head, part);
            self.carry.clear();
        } else {
            self.carry.extend_from_slice(part);
        }
    }

    fn complete(&mut self, head: &[u8], on_line: &mut impl FnMut(u64, Line<'_>)) {
        let number = self.next_line;
        self.next_line += 1;
        if let Some(len) = self.skipping.take() {
            let ends_in_cr = head.last().map_or(self.skipped_cr, |&b| b == b'\r');
            let len = len + head.len() as u64 - u64::from(ends_in_cr);
            keep_head(&mut self.skipped_head, head);
            // Without the `\r` of the line ending.
            self.skipped_head.truncate(usize::try_from(len).unwrap_or(usize::MAX));
            on_line(number, Line::TooLong { len, head: &self.skipped_head });
            return;
        }
        let line: &[u8] = if self.carry.is_empty() {
            head
        } else {
            self.carry.extend_from_slice(head);
            &self.carry
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > self.max_line {
            on_line(number, Line::TooLong { len: line.len() as u64, head: &line[..line.len().min(HEAD_BYTES)] });
        } else {
            on_line(number, Line::Text(line));
        }
        self.carry.clear();
    }
}

/// Adds to `kept` what of `more` fits within [`HEAD_BYTES`].
fn keep_head(kept: &mut Vec<u8>, more: &[u8]) {
    let room = HEAD_BYTES.saturating_sub(kept.len());
    kept.extend_from_slice(&more[..more.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A line's number, and its text or (too long) its length and first bytes.
    type Split = (u64, Result<Vec<u8>, (u64, Vec<u8>)>);

    fn split_all(chunks: &[&[u8]], max: usize) -> Vec<Split> {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(max);
        let mut push = |n: u64, l: Line<'_>| {
            out.push((
                n,
                match l {
                    Line::Text(t) => Ok(t.to_vec()),
                    Line::TooLong { len, head } => Err((len, head.to_vec())),
                },
            ))
        };
        for c in chunks {
            s.feed(c, &mut push);
        }
        s.finish(&mut push);
        out
    }

    #[test]
    fn splits_lines_and_strips_crlf() {
        let got = split_all(&[b"ab\r\ncd\n\nef"], 10);
        assert_eq!(
            got,
            vec![(1, Ok(b"ab".to_vec())), (2, Ok(b"cd".to_vec())), (3, Ok(vec![])), (4, Ok(b"ef".to_vec()))]
        );
    }

    #[test]
    fn long_line_is_skipped_and_the_rest_goes_on() {
        let got = split_all(&[b"ok\n0123", b"456789abc", b"def\nnext\n"], 8);
        assert_eq!(
            got,
            vec![(1, Ok(b"ok".to_vec())), (2, Err((16, b"0123456789abcdef".to_vec()))), (3, Ok(b"next".to_vec()))]
        );
    }

    #[test]
    fn line_of_exactly_max_with_crlf_is_accepted() {
        let got = split_all(&[b"1234", b"5678\r", b"\n"], 8);
        assert_eq!(got, vec![(1, Ok(b"12345678".to_vec()))]);
    }

    proptest! {
        /// However the input is cut into chunks, the same lines come out.
        #[test]
        fn chunking_does_not_change_lines(
            input in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..20),
            max in 1usize..40,
        ) {
            let whole = split_all(&[&input], max);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts { chunks.push(&input[prev..c]); prev = c; }
            chunks.push(&input[prev..]);
            prop_assert_eq!(split_all(&chunks, max), whole.clone());
            let newlines = input.iter().filter(|&&b| b == b'\n').count();
            let expected = if input.last().is_none_or(|&b| b == b'\n') { newlines } else { newlines + 1 };
            prop_assert_eq!(whole.len(), expected);
            // A line too long is reported with its length and its first bytes.
            let lines: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
            for (n, item) in &whole {
                if let Err((len, head)) = item {
                    let line = lines[(*n - 1) as usize];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    prop_assert_eq!(*len as usize, line.len());
                    prop_assert_eq!(&head[..], &line[..line.len().min(HEAD_BYTES)]);
                }
            }
        }
    }
}
