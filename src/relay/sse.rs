//! A small server-sent-events scanner: feeds on arbitrary chunks, yields whole
//! events. Used on the side of every stream the relay passes through.

use bytes::{Bytes, BytesMut};

/// Largest event the scanner holds before giving up on the stream.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// One event: its raw bytes (delimiter included) plus its `event:` and `data:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub raw: Bytes,
    /// The `event:` field, if any.
    pub name: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: Bytes,
}

/// Splits a byte stream into events.
#[derive(Debug, Default)]
pub struct Scanner {
    buf: BytesMut,
    /// How far `buf` was searched for a boundary already.
    scanned: usize,
}

/// The scanner was fed an event larger than [`MAX_EVENT_BYTES`].
#[derive(Debug, thiserror::Error)]
#[error("server-sent event exceeds {MAX_EVENT_BYTES} bytes")]
pub struct Oversized;

fn find_boundary(b: &[u8], from: usize) -> Option<(usize, usize)> {
    // An event ends at a blank line: "\n\n", "\r\n\r\n" or "\r\r". Jump
    // from line break to line break instead of looking at every byte.
    let mut i = from;
    while let Some(off) = memchr::memchr2(b'\n', b'\r', &b[i..]) {
        i += off;
        let at = |k: usize| b.get(i + k).copied();
        match b[i] {
            b'\n' => {
                if at(1) == Some(b'\n') {
                    return Some((i, i + 2));
                }
                if at(1) == Some(b'\r') && at(2) == Some(b'\n') {
                    return Some((i, i + 3));
                }
            }
            _ => {
                if at(1) == Some(b'\n') && at(2) == Some(b'\r') && at(3) == Some(b'\n') {
                    return Some((i, i + 4));
                }
                if at(1) == Some(b'\r') {
                    return Some((i, i + 2));
                }
            }
        }
        i += 1;
    }
    None
}

fn parse(raw: Bytes, body_end: usize) -> Event {
    let mut name = None;
    // One `data:` line (the usual case) is a slice of `raw`, not a copy.
    let mut single: Option<(usize, usize)> = None;
    let mut joined: Option<Vec<u8>> = None;
    let body = &raw[..body_end];
    // Line ends found with SIMD (`memchr`): splitting on a per-byte closure
    // was ~1 k instructions an event, the scanner's largest cost. The usual
    // event is one line, with no `\n` before its delimiter.
    let ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    let mut start = 0;
    for end in ends {
        let line_start = start;
        let line = &body[start..end];
        start = end + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(v) = line.strip_prefix(b"data:") {
            let skip = if v.first() == Some(&b' ') { 6 } else { 5 };
            let (from, to) = (line_start + skip, line_start + line.len());
            match (&mut joined, single) {
                (Some(j), _) => {
                    j.push(b'\n');
                    j.extend_from_slice(&raw[from..to]);
                }
                (None, Some((a, b))) => {
                    let mut j = raw[a..b].to_vec();
                    j.push(b'\n');
                    j.extend_from_slice(&raw[from..to]);
                    joined = Some(j);
                }
                (None, None) => single = Some((from, to)),
            }
        } else if let Some(v) = line.strip_prefix(b"event:") {
            let v = v.strip_prefix(b" ").unwrap_or(v);
            name = Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    let data = match (joined, single) {
        (Some(j), _) => Bytes::from(j),
        (None, Some((a, b))) => raw.slice(a..b),
        (None, None) => Bytes::new(),
    };
    Event { raw, name, data }
}

impl Scanner {
    /// Adds a chunk; appends every completed event to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Event>) -> Result<(), Oversized> {
        // A boundary may straddle the previous chunk's end: look back 3 bytes.
        let from = self.scanned.saturating_sub(3);
        self.buf.extend_from_slice(chunk);
        let mut from = from;
        while let Some((end, next)) = find_boundary(&self.buf, from) {
            let raw = self.buf.split_to(next).freeze();
            out.push(parse(raw, end));
            from = 0;
        }
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(Oversized);
        }
        Ok(())
    }

    /// [`Scanner::feed`] for an owned chunk: when nothing is pending, the
    /// chunk's whole events are slices of it (no copy).
    pub fn feed_bytes(&mut self, chunk: Bytes, out: &mut Vec<Event>) -> Result<(), Oversized> {
        if !self.buf.is_empty() {
            return self.feed(&chunk, out);
        }
        let mut rest = chunk;
        while let Some((end, next)) = find_boundary(&rest, 0) {
            let raw = rest.split_to(next);
            out.push(parse(raw, end));
        }
        if !rest.is_empty() {
            self.feed(&rest, out)?;
        }
        Ok(())
    }

    /// What is left at end of stream (an unterminated event), if anything.
    pub fn finish(&mut self) -> Option<Event> {
        self.scanned = 0;
        let rest = self.buf.split().freeze();
        let trimmed = rest.iter().rposition(|c| !c.is_ascii_whitespace())?;
        let mut raw = BytesMut::from(&rest[..=trimmed]);
        let end = raw.len();
        raw.extend_from_slice(b"\n\n");
        Some(parse(raw.freeze(), end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks() {
        let mut s = Scanner::default();
        let mut out = Vec::new();
        s.feed(b"data: {\"a\":1}\n\nda", &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0].data[..], b"{\"a\":1}");
        s.feed(
            b"ta: [DONE]\r\n\r\nevent: ping\ndata: x\ndata: y\n\n",
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(&out[1].data[..], b"[DONE]");
        assert_eq!(out[2].name.as_deref(), Some("ping"));
        assert_eq!(&out[2].data[..], b"x\ny");
        assert_eq!(&out[2].raw[..], b"event: ping\ndata: x\ndata: y\n\n");
    }

    /// The line-splitting of the old `parse` (a per-byte `split`), kept to
    /// check the `memchr` one against.
    fn parse_by_split(raw: &[u8], body_end: usize) -> (Option<String>, Vec<u8>) {
        let mut name = None;
        let mut data: Option<Vec<u8>> = None;
        for line in raw[..body_end].split(|c| *c == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(v) = line.strip_prefix(b"data:") {
                let v = v.strip_prefix(b" ").unwrap_or(v);
                match &mut data {
                    Some(d) => {
                        d.push(b'\n');
                        d.extend_from_slice(v);
                    }
                    None => data = Some(v.to_vec()),
                }
            } else if let Some(v) = line.strip_prefix(b"event:") {
                let v = v.strip_prefix(b" ").unwrap_or(v);
                name = Some(String::from_utf8_lossy(v).into_owned());
            }
        }
        (name, data.unwrap_or_default())
    }

    /// Events of every shape parse as the per-byte split parsed them:
    /// one or several `data:` lines, with and without the space, CRLF and
    /// CR line ends, `event:`, comments, empty and unterminated lines.
    #[test]
    fn lines_are_split_as_a_per_byte_split_splits_them() {
        let bodies: [&[u8]; 12] = [
            b"data: {\"a\":1}",
            b"data:{\"a\":1}",
            b"data: x\ndata: y\ndata:z",
            b"event: ping\ndata: x",
            b"event:delta\r\ndata: x\r\ndata: y\r",
            b": comment\ndata: x\n\ndata: after blank",
            b"",
            b"\n",
            b"data:",
            b"data: \ndata: ",
            b"id: 7\nretry: 10\nevent: e\n",
            b"\r\ndata: tail\r",
        ];
        for body in bodies {
            let mut raw = body.to_vec();
            raw.extend_from_slice(b"\n\n");
            let e = parse(Bytes::from(raw.clone()), body.len());
            let (name, data) = parse_by_split(&raw, body.len());
            assert_eq!(e.name, name, "{}", String::from_utf8_lossy(body));
            assert_eq!(&e.data[..], &data[..], "{}", String::from_utf8_lossy(body));
            assert_eq!(&e.raw[..], &raw[..]);
        }
    }

    #[test]
    fn unterminated_tail_is_returned_at_finish() {
        let mut s = Scanner::default();
        let mut out = Vec::new();
        s.feed(b"data: tail", &mut out).unwrap();
        assert!(out.is_empty());
        let e = s.finish().unwrap();
        assert_eq!(&e.data[..], b"tail");
        assert!(s.finish().is_none());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut s = Scanner::default();
        let mut out = Vec::new();
        let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 256) as u8).collect();
        for c in junk.chunks(13) {
            s.feed(c, &mut out).unwrap();
        }
        let _ = s.finish();
    }
}
