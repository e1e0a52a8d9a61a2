//! Length checks of the records decoded from a summary section, before the `mcap` crate
//! decodes them: it reserves memory for whatever a string or map length claims.

use ::mcap::records::op;

/// Checks the length-prefixed strings and maps of a schema, channel or chunk index record
/// against its `body`; statistics hold integers and an integer map, decoded without
/// reservations. The error says which field and by how much.
pub(super) fn lengths(opcode: u8, body: &[u8]) -> Result<(), String> {
    let mut cur = Cursor { buf: body, pos: 0 };
    match opcode {
        op::SCHEMA => {
            cur.skip(2, "id")?;
            cur.sized("name")?;
            cur.sized("encoding")?;
            cur.sized("data")?;
        }
        op::CHANNEL => {
            cur.skip(4, "ids")?;
            cur.sized("topic")?;
            cur.sized("message encoding")?;
            let map = cur.sized("metadata")?;
            let mut map = Cursor { buf: map, pos: 0 };
            while map.pos < map.buf.len() {
                map.sized("metadata key")?;
                map.sized("metadata value")?;
            }
        }
        op::CHUNK_INDEX => {
            cur.skip(32, "times and offsets")?;
            cur.sized("message index offsets")?;
            cur.skip(8, "message index length")?;
            cur.sized("compression")?;
            cur.skip(16, "sizes")?;
        }
        _ => {}
    }
    Ok(())
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn skip(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(format!(
                "{what} needs {n} bytes at byte {} of the record, {left} left",
                self.pos
            ));
        }
        let slice = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    /// A u32 length prefix and that many bytes.
    fn sized(&mut self, what: &str) -> Result<&'a [u8], String> {
        let prefix = self.skip(4, what)?;
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let left = self.buf.len() - self.pos;
        if len as usize > left {
            return Err(format!(
                "{what} length {len} exceeds the {left} bytes left in the record"
            ));
        }
        self.skip(len as usize, what)
    }
}
