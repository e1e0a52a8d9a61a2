//! A bounds-checking Thrift compact-protocol reader, used to vet Parquet footers and page
//! headers before the `parquet` crate decodes them.
//!
//! The crate's own reader (parquet 56) trusts list lengths: a corrupt footer can make it
//! reserve `i32::MAX` elements, or panic on a short double or a negative length. Decoding the
//! same structures first through this reader, which decodes exactly like the crate's (same
//! varints, zigzag, field deltas, list headers, booleans) but refuses any list longer than the
//! bytes left, any truncated value and any unsupported type, means the crate's decoder, run
//! afterwards on the same bytes, takes the same path and allocates at most in proportion to the
//! input.

use parquet::thrift::TSerializable;
use thrift::protocol::{
    TFieldIdentifier, TInputProtocol, TListIdentifier, TMapIdentifier, TMessageIdentifier,
    TSetIdentifier, TStructIdentifier, TType,
};
use thrift::{ProtocolError, ProtocolErrorKind, TransportError, TransportErrorKind};

/// Decodes one `T` from the start of `buf`; returns it and the number of bytes it took, or a
/// message naming the problem and the byte offset in `buf`.
pub(crate) fn decode<T: TSerializable>(buf: &[u8]) -> Result<(T, usize), String> {
    let mut prot = Bounded::new(buf);
    match T::read_from_in_protocol(&mut prot) {
        Ok(value) => Ok((value, prot.pos)),
        Err(err) => Err(format!("{} near byte {}", describe(&err), prot.pos)),
    }
}

pub(crate) fn describe(err: &thrift::Error) -> String {
    match err {
        thrift::Error::Transport(e) => e.message.clone(),
        thrift::Error::Protocol(e) => e.message.clone(),
        thrift::Error::Application(e) => e.message.clone(),
        thrift::Error::User(e) => e.to_string(),
    }
}

pub(crate) struct Bounded<'a> {
    buf: &'a [u8],
    pub(crate) pos: usize,
    last_field_id: i16,
    field_id_stack: Vec<i16>,
    pending_bool: Option<bool>,
}

/// Nesting limit for structs (the generated code recurses once per level).
const MAX_DEPTH: usize = 64;

impl<'a> Bounded<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            last_field_id: 0,
            field_id_stack: Vec::new(),
            pending_bool: None,
        }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> thrift::Result<&'a [u8]> {
        if n > self.left() {
            return Err(eof(format!(
                "needs {n} bytes, {} left of {}",
                self.left(),
                self.buf.len()
            )));
        }
        let slice = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn byte(&mut self) -> thrift::Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// An unsigned LEB128 varint of at most 10 bytes, combined like the crate's reader.
    fn varint(&mut self) -> thrift::Result<u64> {
        let mut value = 0u64;
        for i in 0..10u32 {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f).wrapping_shl(7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(invalid("varint longer than 10 bytes"))
    }

    fn zigzag(&mut self) -> thrift::Result<i64> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// A collection length, refused when negative or longer than the bytes left (every element
    /// takes at least one byte).
    fn length(&mut self, raw: i32) -> thrift::Result<i32> {
        if raw < 0 || raw as usize > self.left() {
            return Err(invalid(format!(
                "collection of {raw} elements with {} bytes left",
                self.left()
            )));
        }
        Ok(raw)
    }
}

fn element_type(nibble: u8) -> thrift::Result<TType> {
    match nibble {
        0x01 | 0x02 => Ok(TType::Bool),
        other => field_type(other),
    }
}

fn field_type(nibble: u8) -> thrift::Result<TType> {
    Ok(match nibble {
        0x00 => TType::Stop,
        0x03 => TType::I08,
        0x04 => TType::I16,
        0x05 => TType::I32,
        0x06 => TType::I64,
        0x07 => TType::Double,
        0x08 => TType::String,
        0x09 => TType::List,
        0x0A => TType::Set,
        0x0B => TType::Map,
        0x0C => TType::Struct,
        other => return Err(invalid(format!("unknown thrift type {other}"))),
    })
}

fn invalid(message: impl Into<String>) -> thrift::Error {
    thrift::Error::Protocol(ProtocolError::new(ProtocolErrorKind::InvalidData, message))
}

fn eof(message: String) -> thrift::Error {
    thrift::Error::Transport(TransportError::new(TransportErrorKind::EndOfFile, message))
}

fn unsupported(what: &str) -> thrift::Error {
    thrift::Error::Protocol(ProtocolError::new(
        ProtocolErrorKind::NotImplemented,
        format!("{what} is not used by parquet"),
    ))
}

impl TInputProtocol for Bounded<'_> {
    fn read_message_begin(&mut self) -> thrift::Result<TMessageIdentifier> {
        Err(unsupported("a thrift message"))
    }

    fn read_message_end(&mut self) -> thrift::Result<()> {
        Err(unsupported("a thrift message"))
    }

    fn read_struct_begin(&mut self) -> thrift::Result<Option<TStructIdentifier>> {
        if self.field_id_stack.len() >= MAX_DEPTH {
            return Err(invalid(format!("structs nested over {MAX_DEPTH} deep")));
        }
        self.field_id_stack.push(self.last_field_id);
        self.last_field_id = 0;
        Ok(None)
    }

    fn read_struct_end(&mut self) -> thrift::Result<()> {
        self.last_field_id = self
            .field_id_stack
            .pop()
            .ok_or_else(|| invalid("struct end without a struct"))?;
        Ok(())
    }

    fn read_field_begin(&mut self) -> thrift::Result<TFieldIdentifier> {
        let header = self.byte()?;
        let delta = header >> 4;
        let ty = match header & 0x0F {
            0x01 => {
                self.pending_bool = Some(true);
                TType::Bool
            }
            0x02 => {
                self.pending_bool = Some(false);
                TType::Bool
            }
            other => field_type(other)?,
        };
        if ty == TType::Stop {
            return Ok(TFieldIdentifier {
                name: None,
                field_type: TType::Stop,
                id: None,
            });
        }
        self.last_field_id = if delta != 0 {
            self.last_field_id
                .checked_add(i16::from(delta))
                .ok_or_else(|| invalid("field id overflow"))?
        } else {
            self.read_i16()?
        };
        Ok(TFieldIdentifier {
            name: None,
            field_type: ty,
            id: Some(self.last_field_id),
        })
    }

    fn read_field_end(&mut self) -> thrift::Result<()> {
        Ok(())
    }

    fn read_bool(&mut self) -> thrift::Result<bool> {
        if let Some(value) = self.pending_bool.take() {
            return Ok(value);
        }
        match self.byte()? {
            0x01 => Ok(true),
            0x00 | 0x02 => Ok(false),
            other => Err(invalid(format!("{other} is not a bool"))),
        }
    }

    fn read_bytes(&mut self) -> thrift::Result<Vec<u8>> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| invalid("binary length overflows"))?;
        Ok(self.take(len)?.to_vec())
    }

    fn read_i8(&mut self) -> thrift::Result<i8> {
        Ok(self.byte()? as i8)
    }

    fn read_i16(&mut self) -> thrift::Result<i16> {
        Ok(self.zigzag()? as i16)
    }

    fn read_i32(&mut self) -> thrift::Result<i32> {
        Ok(self.zigzag()? as i32)
    }

    fn read_i64(&mut self) -> thrift::Result<i64> {
        self.zigzag()
    }

    fn read_double(&mut self) -> thrift::Result<f64> {
        let bytes = self.take(8)?;
        let mut le = [0u8; 8];
        le.copy_from_slice(bytes);
        Ok(f64::from_le_bytes(le))
    }

    fn read_string(&mut self) -> thrift::Result<String> {
        let bytes = self.read_bytes()?;
        String::from_utf8(bytes).map_err(|_| invalid("string is not utf-8"))
    }

    fn read_list_begin(&mut self) -> thrift::Result<TListIdentifier> {
        let header = self.byte()?;
        let element_type = element_type(header & 0x0F)?;
        let short = header >> 4;
        let raw = if short != 15 {
            i32::from(short)
        } else {
            // The crate truncates the varint to i32 the same way.
            self.varint()? as i32
        };
        let size = self.length(raw)?;
        Ok(TListIdentifier::new(element_type, size))
    }

    fn read_list_end(&mut self) -> thrift::Result<()> {
        Ok(())
    }

    fn read_set_begin(&mut self) -> thrift::Result<TSetIdentifier> {
        Err(unsupported("a thrift set"))
    }

    fn read_set_end(&mut self) -> thrift::Result<()> {
        Err(unsupported("a thrift set"))
    }

    fn read_map_begin(&mut self) -> thrift::Result<TMapIdentifier> {
        Err(unsupported("a thrift map"))
    }

    fn read_map_end(&mut self) -> thrift::Result<()> {
        Ok(())
    }

    fn read_byte(&mut self) -> thrift::Result<u8> {
        self.byte()
    }
}
