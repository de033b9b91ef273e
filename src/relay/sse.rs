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
}

/// The scanner was fed an event larger than [`MAX_EVENT_BYTES`].
#[derive(Debug, thiserror::Error)]
#[error("server-sent event exceeds {MAX_EVENT_BYTES} bytes")]
pub struct Oversized;

fn find_boundary(b: &[u8]) -> Option<(usize, usize)> {
    // An event ends at a blank line: "\n\n", "\r\n\r\n" or "\r\r".
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\n' => {
                if b.get(i + 1) == Some(&b'\n') {
                    return Some((i, i + 2));
                }
                if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                    return Some((i, i + 3));
                }
            }
            b'\r' => {
                if b.get(i + 1) == Some(&b'\n')
                    && b.get(i + 2) == Some(&b'\r')
                    && b.get(i + 3) == Some(&b'\n')
                {
                    return Some((i, i + 4));
                }
                if b.get(i + 1) == Some(&b'\r') {
                    return Some((i, i + 2));
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn parse(raw: Bytes, body_end: usize) -> Event {
    let mut name = None;
    let mut data: Vec<u8> = Vec::new();
    let mut first = true;
    for line in raw[..body_end].split(|c| *c == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(v) = line.strip_prefix(b"data:") {
            let v = v.strip_prefix(b" ").unwrap_or(v);
            if !first {
                data.push(b'\n');
            }
            data.extend_from_slice(v);
            first = false;
        } else if let Some(v) = line.strip_prefix(b"event:") {
            let v = v.strip_prefix(b" ").unwrap_or(v);
            name = Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    Event {
        raw,
        name,
        data: Bytes::from(data),
    }
}

impl Scanner {
    /// Adds a chunk; appends every completed event to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Event>) -> Result<(), Oversized> {
        self.buf.extend_from_slice(chunk);
        while let Some((end, next)) = find_boundary(&self.buf) {
            let raw = self.buf.split_to(next).freeze();
            out.push(parse(raw, end));
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(Oversized);
        }
        Ok(())
    }

    /// What is left at end of stream (an unterminated event), if anything.
    pub fn finish(&mut self) -> Option<Event> {
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
