//! A JSON patch as text, written operation by operation ([`PodPatch`]): pointers escaped by hand,
//! values serialised straight from their types into one buffer, the init container's text (and its
//! base64) shared by every Pod of an env. The wire form is byte for byte what serde_json writes for
//! the equivalent `json_patch::Patch` (tested below).

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

use super::init_container::InitText;

/// An RFC 6902 patch (`add` operations, and for a re-injection `replace` and `remove`), kept as
/// its JSON text: each operation is written into one buffer as it is made, its value serialised
/// straight from its type or copied from text serialised before (the init container, the same
/// for every Pod of an env). [`PodPatch::json`] is the wire form, byte for byte what serde_json
/// writes for the equivalent `json_patch::Patch`; [`PodPatch::to_patch`] gives that patch.
#[derive(Debug, Clone)]
pub struct PodPatch {
    json: Vec<u8>,
    len: usize,
    /// Where the init container's text begins in `json`, if the patch has it.
    init: Option<(usize, Arc<InitText>)>,
}

impl PodPatch {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The operations' paths, in order.
    pub fn paths(&self) -> Vec<String> {
        self.to_patch().0.iter().map(|op| op.path().to_string()).collect()
    }

    /// The patch as JSON.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    pub fn to_patch(&self) -> json_patch::Patch {
        serde_json::from_slice(&self.json).expect("nixuv's own patch parses")
    }

    /// The patch in base64, as the AdmissionResponse carries it: the init container's share
    /// (~70 % of the bytes) taken from [`InitText`], which encoded it once for all the Pods of its
    /// env; only the Pod's own bytes around it are encoded here. Exactly `STANDARD.encode(json)`.
    pub fn base64(&self) -> String {
        use base64::Engine;
        let engine = &base64::engine::general_purpose::STANDARD;
        let Some((at, text)) = &self.init else { return engine.encode(&self.json) };
        // The text's first `skip` bytes complete the 3-byte group the Pod's bytes before it began.
        let skip = (3 - at % 3) % 3;
        let n = text.get().len();
        if n < skip + 3 {
            return engine.encode(&self.json);
        }
        let mut out = String::with_capacity(self.json.len().div_ceil(3) * 4);
        engine.encode_string(&self.json[..at + skip], &mut out);
        out.push_str(text.encoded(skip));
        engine.encode_string(&self.json[at + skip + (n - skip) / 3 * 3..], &mut out);
        out
    }
}

/// A JSON-pointer token: a key (`-` for the end of an array) or an array index.
#[derive(Debug, Clone, Copy)]
pub enum Token<'a> {
    Key(&'a str),
    Index(usize),
}

/// A pointer token for a key.
pub fn key(s: &str) -> Token<'_> {
    Token::Key(s)
}

/// A pointer token for an array index.
pub fn index(n: usize) -> Token<'static> {
    Token::Index(n)
}

/// The operations of a patch being written. Pointers and operations are written here by hand
/// rather than built as `jsonptr` pointers and values and serialised afterwards: that cost an
/// allocation or two an operation and a second pass over every value (docs/performance.md).
#[derive(Default)]
pub struct Ops {
    json: Vec<u8>,
    len: usize,
    /// The pointer being written, reused from one operation to the next.
    pointer: String,
    init: Option<(usize, Arc<InitText>)>,
}

impl Ops {
    /// Room for the init container and the Pod's own operations, so the buffer is not grown.
    pub fn for_patch(init: &InitText, targets: usize) -> Self {
        Ops { json: Vec::with_capacity(init.get().len() + 512 + 768 * targets), ..Ops::default() }
    }
    fn op<'t>(&mut self, op: &str, tokens: impl IntoIterator<Item = Token<'t>>) {
        self.pointer.clear();
        for t in tokens {
            self.pointer.push('/');
            match t {
                // RFC 6901: `~` is written `~0` and `/` is written `~1`.
                Token::Key(k) if k.contains(['~', '/']) => {
                    self.pointer.push_str(&k.replace('~', "~0").replace('/', "~1"))
                }
                Token::Key(k) => self.pointer.push_str(k),
                Token::Index(n) => {
                    use std::fmt::Write;
                    let _ = write!(self.pointer, "{n}");
                }
            }
        }
        self.json.push(if self.len == 0 { b'[' } else { b',' });
        self.len += 1;
        self.json.extend_from_slice(br#"{"op":""#);
        self.json.extend_from_slice(op.as_bytes());
        self.json.extend_from_slice(br#"","path":"#);
        serde_json::to_writer(&mut self.json, self.pointer.as_str()).expect("a string serialises");
    }
    /// An operation with `value` serialised straight from its type (the per-Pod values are small
    /// structs in the key order `serde_json::Value` would give, never `Value`s built to be
    /// serialised).
    pub fn with_value<'t, T: Serialize + ?Sized>(
        &mut self,
        op: &str,
        tokens: impl IntoIterator<Item = Token<'t>>,
        value: &T,
    ) {
        self.op(op, tokens);
        self.json.extend_from_slice(br#","value":"#);
        serde_json::to_writer(&mut self.json, value).expect("a JSON value serialises");
        self.json.push(b'}');
    }
    /// An `add` whose value is JSON text serialised before (the store mounts).
    pub fn push<'t>(&mut self, tokens: impl IntoIterator<Item = Token<'t>>, text: &RawValue) {
        self.op("add", tokens);
        self.json.extend_from_slice(br#","value":"#);
        self.json.extend_from_slice(text.get().as_bytes());
        self.json.push(b'}');
    }
    pub fn add<'t, T: Serialize + ?Sized>(&mut self, tokens: impl IntoIterator<Item = Token<'t>>, value: &T) {
        self.with_value("add", tokens, value);
    }
    /// The init container, added or replacing nixuv's own (`op`), alone or as a one-element array.
    pub fn init<'t>(
        &mut self,
        op: &str,
        tokens: impl IntoIterator<Item = Token<'t>>,
        init: &Arc<InitText>,
        in_array: bool,
    ) {
        self.op(op, tokens);
        self.json.extend_from_slice(br#","value":"#);
        if in_array {
            self.json.push(b'[');
        }
        self.init = Some((self.json.len(), Arc::clone(init)));
        self.json.extend_from_slice(init.get().as_bytes());
        if in_array {
            self.json.push(b']');
        }
        self.json.push(b'}');
    }
    pub fn replace_value<'t, T: Serialize + ?Sized>(&mut self, tokens: impl IntoIterator<Item = Token<'t>>, value: &T) {
        self.with_value("replace", tokens, value);
    }
    /// Appends `items` to the array at `array`, or adds the array whole where `exists` is false
    /// (RFC 6902 cannot append to a missing array).
    pub fn append<'t, T: Serialize>(
        &mut self,
        array: impl IntoIterator<Item = Token<'t>> + Clone,
        exists: bool,
        items: &[T],
    ) {
        match (items.is_empty(), exists) {
            (true, _) => {}
            (false, false) => self.add(array, items),
            (false, true) => {
                for item in items {
                    self.add(array.clone().into_iter().chain([key("-")]), item);
                }
            }
        }
    }
    pub fn remove<'t>(&mut self, tokens: impl IntoIterator<Item = Token<'t>>) {
        self.op("remove", tokens);
        self.json.push(b'}');
    }
    pub fn finish(mut self) -> PodPatch {
        if self.len == 0 {
            self.json.push(b'[');
        }
        self.json.push(b']');
        PodPatch { json: self.json, len: self.len, init: self.init }
    }
}

#[cfg(test)]
mod tests {
    /// The patch's base64 with the init container's share encoded once is exactly the encoding
    /// of the whole, whatever the phase the text begins at, its length, and the bytes after it.
    #[test]
    fn base64_with_the_shared_share_is_the_plain_encoding() {
        use base64::Engine;
        use std::sync::Arc;
        for len in [0, 1, 2, 3, 4, 5, 6, 7, 100, 2501] {
            let text = Arc::new(crate::inject::init_container::InitText::new(
                serde_json::value::to_raw_value(&"i".repeat(len.max(1) - 1)).unwrap(),
            ));
            for key_len in 0..6 {
                for in_array in [false, true] {
                    for after in 0..4 {
                        let mut ops = super::Ops::default();
                        ops.add([super::key(&"k".repeat(key_len))], "v");
                        ops.init("add", [super::key("spec"), super::key("initContainers")], &text, in_array);
                        for _ in 0..after {
                            ops.add([super::key("x")], &"y".repeat(after));
                        }
                        let p = ops.finish();
                        let want = base64::engine::general_purpose::STANDARD.encode(p.json());
                        assert_eq!(p.base64(), want, "{len} {key_len} {in_array} {after}");
                        assert_eq!(p.base64(), want, "encoded again from the stored share");
                    }
                }
            }
        }
    }

    /// Pointers written by hand: `~` and `/` escaped per RFC 6901, then the pointer escaped as a
    /// JSON string; the patch applies where the keys say.
    #[test]
    fn pointers_escape_tilde_and_slash() {
        let mut ops = super::Ops::default();
        ops.add([super::key("metadata"), super::key("annotations"), super::key("a~b/c\"d~1")], "v");
        ops.remove([super::key("spec"), super::index(3)]);
        let p = ops.finish();
        let typed = p.to_patch();
        assert_eq!(p.json(), serde_json::to_vec(&typed).unwrap());
        assert_eq!(p.paths(), ["/metadata/annotations/a~0b~1c\"d~01", "/spec/3"]);
        let mut doc = serde_json::json!({"metadata": {"annotations": {}}, "spec": [0, 1, 2, 3]});
        json_patch::patch(&mut doc, &typed).unwrap();
        assert_eq!(doc, serde_json::json!({"metadata": {"annotations": {"a~b/c\"d~1": "v"}}, "spec": [0, 1, 2]}));
        let empty = super::Ops::default().finish();
        assert_eq!(empty.base64(), "W10=");
        assert!(empty.is_empty() && empty.to_patch().0.is_empty());
    }
}
