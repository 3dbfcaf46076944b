//! Hints to the CPU to start loading memory the program is about to read.
//!
//! The one place in the crate with `unsafe`: `_mm_prefetch` is an `unsafe fn` because it takes
//! a raw pointer, but a prefetch never dereferences it in the program's sense. It cannot fault,
//! whatever the address, and it changes nothing the program can observe but timing.
//!
//! Used by the dump writer's encoder threads, which visit the map in hash order so that every
//! value they encode is a cache miss: each prefetches, within the batch of entries it took from
//! the map, each value's allocation 16 entries ahead, then, 8 entries ahead, walks the value
//! with [`Prefetcher`] to prefetch the strings and byte buffers the encoder will read, so that
//! both levels of misses overlap the encoding of earlier entries.

use std::fmt;

use serde::Serialize;
use serde::ser::{self, Serializer};

const LINE: usize = 64;
/// At most this many lines of one object are prefetched.
const MAX_LINES: usize = 4;

/// Asks the CPU to bring the first cache lines of `value` into cache, without waiting.
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    lines(std::ptr::from_ref(value).cast(), size_of::<T>());
}

/// Asks the CPU to bring in the reference counts of the `Arc` holding `value`: the 16 bytes
/// before it (`ArcInner`'s two counters), which may be on the cache line before the value's.
/// For a write that is about to drop or clone the `Arc`.
#[inline(always)]
pub(crate) fn prefetch_arc<T>(value: &std::sync::Arc<T>) {
    let data: *const u8 = std::sync::Arc::as_ptr(value).cast();
    lines(
        data.wrapping_sub(2 * size_of::<usize>()),
        2 * size_of::<usize>(),
    );
}

/// Walks `value` as its `Serialize` impl does, prefetching every string and byte buffer in it
/// instead of encoding anything. Reads the value's own fields, which should be in cache.
#[inline]
pub(crate) fn prefetch_serialized<T: Serialize + ?Sized>(value: &T) {
    let _ = value.serialize(Prefetcher);
}

#[inline(always)]
fn lines(start: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in 0..len.div_ceil(LINE).clamp(1, MAX_LINES) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch is a hint: it never faults and never reads into the program,
        // whatever the address (here each line starts inside an object the caller holds a
        // reference to, or at it if the object is empty). SSE is part of every x86_64 target.
        #[allow(unsafe_code)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(line * LINE).cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}

/// A serializer that writes nothing and prefetches the data of every `&str` and `&[u8]`.
#[derive(Clone, Copy)]
struct Prefetcher;

/// Never made: the walk cannot fail.
#[derive(Debug)]
struct Never;

impl fmt::Display for Never {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("prefetch walk")
    }
}

impl std::error::Error for Never {}

impl ser::Error for Never {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Never
    }
}

type Walked = Result<(), Never>;

/// Scalars: nothing to prefetch.
macro_rules! scalars {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(#[inline] fn $method(self, _: $ty) -> Walked { Ok(()) })*
    };
}

impl Serializer for Prefetcher {
    type Ok = ();
    type Error = Never;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    scalars!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_unit_struct(&'static str),
    );

    #[inline]
    fn serialize_str(self, v: &str) -> Walked {
        lines(v.as_ptr(), v.len());
        Ok(())
    }

    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Walked {
        lines(v.as_ptr(), v.len());
        Ok(())
    }

    #[inline]
    fn serialize_none(self) -> Walked {
        Ok(())
    }

    #[inline]
    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> Walked {
        v.serialize(self)
    }

    #[inline]
    fn serialize_unit(self) -> Walked {
        Ok(())
    }

    #[inline]
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Walked {
        Ok(())
    }

    #[inline]
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, v: &T) -> Walked {
        v.serialize(self)
    }

    #[inline]
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> Walked {
        v.serialize(self)
    }

    #[inline]
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Never> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple(self, _: usize) -> Result<Self, Never> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Never> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Never> {
        Ok(self)
    }

    #[inline]
    fn serialize_map(self, _: Option<usize>) -> Result<Self, Never> {
        Ok(self)
    }

    #[inline]
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Never> {
        Ok(self)
    }

    #[inline]
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Never> {
        Ok(self)
    }
}

/// The compound parts: each element, field, key and value is walked in turn.
macro_rules! compound {
    ($($trait:ident::$method:ident$(($name:ty))?),* $(,)?) => {$(
        impl ser::$trait for Prefetcher {
            type Ok = ();
            type Error = Never;

            #[inline]
            fn $method<T: ?Sized + Serialize>(&mut self, $(_: $name,)? v: &T) -> Walked {
                v.serialize(*self)
            }

            #[inline]
            fn end(self) -> Walked {
                Ok(())
            }
        }
    )*};
}

compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
    SerializeStruct::serialize_field(&'static str),
    SerializeStructVariant::serialize_field(&'static str),
);

impl ser::SerializeMap for Prefetcher {
    type Ok = ();
    type Error = Never;

    #[inline]
    fn serialize_key<T: ?Sized + Serialize>(&mut self, k: &T) -> Walked {
        k.serialize(*self)
    }

    #[inline]
    fn serialize_value<T: ?Sized + Serialize>(&mut self, v: &T) -> Walked {
        v.serialize(*self)
    }

    #[inline]
    fn end(self) -> Walked {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The walk goes through every shape serde has (scalars, options, units, newtypes,
    /// tuples, sequences, maps, structs and each kind of enum variant) without failing.
    #[test]
    fn every_serde_shape_is_walked() {
        #[derive(Serialize)]
        enum Shape {
            Unit,
            Newtype(String),
            Tuple(u8, String),
            Struct {
                name: String,
                bytes: serde_bytes_like::Bytes,
            },
        }
        mod serde_bytes_like {
            pub(super) struct Bytes(pub(super) Vec<u8>);
            impl serde::Serialize for Bytes {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_bytes(&self.0)
                }
            }
        }
        #[derive(Serialize)]
        struct Unit;
        #[derive(Serialize)]
        struct Wrapper(String);
        let long = "x".repeat(10_000);
        let mut map = BTreeMap::new();
        map.insert("k".to_owned(), vec![Some(1.5f64), None]);
        let value = (
            Unit,
            Wrapper(long.clone()),
            vec![
                Shape::Unit,
                Shape::Newtype(long),
                Shape::Tuple(1, String::new()),
                Shape::Struct {
                    name: "n".into(),
                    bytes: serde_bytes_like::Bytes(vec![0; 300]),
                },
            ],
            map,
            ('c', true, -1i128, u128::MAX, ()),
        );
        assert!(value.serialize(Prefetcher).is_ok());
        prefetch_serialized(&value);
        prefetch(&value);
    }
}
