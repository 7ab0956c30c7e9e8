//! TensorBoard event files (`RUN/tb/events.out.tfevents.<time>.<host>`): what `metrics.jsonl`
//! records, as scalars TensorBoard draws live, and the end-of-training sample as text.
//!
//! The format is TensorFlow's record file: each record is its length (u64, little-endian), the
//! masked CRC-32C of those 8 bytes, the bytes of one `Event` protobuf, and their masked CRC-32C
//! (mask: rotate right by 15, add 0xa282ead8). The first event names the file version
//! (`brain.Event:2`); every other carries a `Summary` of tagged values at a step. The messages
//! are declared here with prost's derive (the fields TensorBoard reads), numbered as in
//! tensorflow/core/util/event.proto and summary.proto.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{io_err, Result, TrainError};

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The training step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// `file_version` (3) or `summary` (5).
    #[prost(oneof = "What", tags = "3, 5")]
    pub what: Option<What>,
}

/// What an [`Event`] holds.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// `"brain.Event:2"`, in a file's first event.
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// Tagged values.
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `tensorflow.Summary.Value`: a scalar (`simple_value`) or a tensor (text).
#[derive(Clone, PartialEq, Message)]
pub struct Value {
    /// The series' name (`train/loss`).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// A scalar.
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    /// Which plugin shows it (`text` for text).
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    /// A tensor (text: one string).
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
}

/// `tensorflow.SummaryMetadata`.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryMetadata {
    /// The plugin.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, Message)]
pub struct PluginData {
    /// `text`.
    #[prost(string, tag = "1")]
    pub plugin_name: String,
}

/// `tensorflow.TensorProto`, as a scalar string.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// `DT_STRING` = 7.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// The shape: empty for a scalar.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShape>,
    /// The strings.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// `tensorflow.TensorShapeProto` (a scalar: no dimensions).
#[derive(Clone, PartialEq, Message)]
pub struct TensorShape {}

/// TFRecord's masked CRC-32C.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends events to one file of a run's `tb/` directory.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// A new event file in `dir` (created), starting with the file-version event.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        let name = format!(
            "events.out.tfevents.{}.{host}.{}",
            now() as u64,
            std::process::id()
        );
        let w = Self {
            path: dir.join(name),
        };
        w.write(&Event {
            wall_time: now(),
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        })?;
        Ok(w)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scalars `(tag, value)` at `step`; non-finite values are written as they are.
    pub fn scalars(&self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| Value {
                tag: (*tag).to_string(),
                simple_value: Some(*v as f32),
                ..Default::default()
            })
            .collect();
        self.summary(step, value)
    }

    /// `text` under `tag` at `step` (TensorBoard's text plugin).
    pub fn text(&self, step: u64, tag: &str, text: &str) -> Result<()> {
        let value = Value {
            tag: tag.into(),
            simple_value: None,
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData {
                    plugin_name: "text".into(),
                }),
            }),
            tensor: Some(TensorProto {
                dtype: 7,
                tensor_shape: Some(TensorShape {}),
                string_val: vec![text.as_bytes().to_vec()],
            }),
        };
        self.summary(step, vec![value])
    }

    fn summary(&self, step: u64, value: Vec<Value>) -> Result<()> {
        self.write(&Event {
            wall_time: now(),
            step: step as i64,
            what: Some(What::Summary(Summary { value })),
        })
    }

    fn write(&self, event: &Event) -> Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc(&len).to_le_bytes());
        record.extend_from_slice(&data);
        record.extend_from_slice(&masked_crc(&data).to_le_bytes());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        // One write per record: a reader never sees half of one unless the process dies in it.
        f.write_all(&record).map_err(io_err(&self.path))
    }
}

/// The events of a file, each record's length and CRCs checked: an error names the file and
/// the record's offset.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let bad = |at: usize, what: &str| TrainError::Checkpoint {
        path: path.into(),
        problem: format!("record at byte {at}: {what}"),
    };
    let mut events = vec![];
    let mut at = 0;
    while at < bytes.len() {
        let head = bytes.get(at..at + 12).ok_or_else(|| bad(at, "cut short"))?;
        let (len, crc) = head.split_at(8);
        if masked_crc(len) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(bad(at, "length CRC mismatch"));
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(len);
        let n = usize::try_from(u64::from_le_bytes(len8)).map_err(|_| bad(at, "length"))?;
        let body = at + 12;
        let data = bytes
            .get(body..body.saturating_add(n))
            .ok_or_else(|| bad(at, "cut short"))?;
        let tail = bytes
            .get(body + n..body + n + 4)
            .ok_or_else(|| bad(at, "cut short"))?;
        if masked_crc(data) != u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) {
            return Err(bad(at, "data CRC mismatch"));
        }
        events.push(Event::decode(data).map_err(|e| bad(at, &e.to_string()))?);
        at = body + n + 4;
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masked_crc_is_tfrecords() {
        // CRC-32C of "123456789" is 0xe3069283 (the check value of the Castagnoli polynomial);
        // masked: rotate right 15, add 0xa282ead8.
        let crc: u32 = 0xe306_9283;
        assert_eq!(crc32c::crc32c(b"123456789"), crc);
        assert_eq!(
            masked_crc(b"123456789"),
            crc.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn events_are_read_back_and_damage_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let w = EventWriter::create(&tmp.path().join("tb")).unwrap();
        w.scalars(3, &[("train/loss", 2.5), ("train/lr", 1e-3)])
            .unwrap();
        w.text(3, "sample", "To be").unwrap();
        let events = read_events(w.path()).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(
            events[0].what,
            Some(What::FileVersion("brain.Event:2".into()))
        );
        let Some(What::Summary(s)) = &events[1].what else {
            panic!("{:?}", events[1])
        };
        assert_eq!(events[1].step, 3);
        assert_eq!(s.value[0].tag, "train/loss");
        assert_eq!(s.value[0].simple_value, Some(2.5));
        assert_eq!(s.value[1].simple_value, Some(1e-3));
        let mut bytes = std::fs::read(w.path()).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(w.path(), &bytes).unwrap();
        let e = read_events(w.path()).unwrap_err().to_string();
        assert!(
            e.contains("CRC mismatch") && e.contains("events.out.tfevents"),
            "{e}"
        );
    }
}
