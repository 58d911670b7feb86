//! The job's output: one line per answered request in the OpenAI Batch API's output format, appended
//! and handed to the kernel as soon as it is answered, so a crash (even `kill -9`) loses nothing that
//! was answered; and read back on a rerun, which skips what the file already answers.
//!
//! `{"id": "batch_req_...", "custom_id": "req-1", "response": {"status_code": 200, "request_id": "...",
//! "body": {...}}, "error": null}`, or `"response": null, "error": {"code": "timeout", "message": "..."}`
//! for a request that got no usable answer.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;

use crate::core::Error;
use crate::engine::JobError;
use crate::engine::input::fingerprint;

/// An HTTP answer to a request: its status, the server's request id and its body.
pub struct Answer<'a> {
    pub status_code: u16,
    pub request_id: Option<&'a str>,
    pub body: &'a [u8],
    /// Whether `body` is a JSON document (checked by the caller): kept as JSON, else as a string.
    pub json: bool,
}

/// The output line of `custom_id`: the server's answer, or an error (`code`, `message`) when none
/// came that can be kept. One line (a JSON body is written without the whitespace between its
/// tokens), ending with a newline.
pub fn line(custom_id: &str, answer: Result<Answer<'_>, (&str, &str)>) -> Vec<u8> {
    let text = |out: &mut Vec<u8>, value: &str| serde_json::to_writer(out, value).expect("a string serializes");
    let mut out = Vec::with_capacity(160 + answer.as_ref().map_or(0, |answer| answer.body.len()));
    out.extend_from_slice(format!("{{\"id\":\"batch_req_{:032x}\",\"custom_id\":", fastrand::u128(..)).as_bytes());
    text(&mut out, custom_id);
    match answer {
        Ok(answer) => {
            out.extend_from_slice(format!(",\"response\":{{\"status_code\":{},\"request_id\":", answer.status_code).as_bytes());
            match answer.request_id {
                Some(id) => text(&mut out, id),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"body\":");
            if answer.json {
                compact_into(&mut out, answer.body);
            } else {
                text(&mut out, &String::from_utf8_lossy(answer.body));
            }
            out.extend_from_slice(b"},\"error\":null}");
        }
        Err((code, message)) => {
            out.extend_from_slice(b",\"response\":null,\"error\":{\"code\":");
            text(&mut out, code);
            out.extend_from_slice(b",\"message\":");
            text(&mut out, message);
            out.extend_from_slice(b"}}");
        }
    }
    out.push(b'\n');
    out
}

/// Copies a valid JSON document without the whitespace between its tokens (a pretty-printed answer
/// spans lines; an output line must not). Whitespace inside strings is kept: a raw newline cannot be
/// there in valid JSON.
fn compact_into(out: &mut Vec<u8>, json: &[u8]) {
    let (mut in_string, mut escaped) = (false, false);
    for &byte in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if byte == b'"' {
            in_string = true;
        } else if matches!(byte, b' ' | b'\t' | b'\r' | b'\n') {
            continue;
        }
        out.push(byte);
    }
}

#[derive(Deserialize)]
struct Seen {
    custom_id: String,
    response: Option<SeenResponse>,
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct SeenResponse {
    status_code: u16,
}

impl Seen {
    fn ok(&self) -> bool {
        self.error.is_none() && self.response.as_ref().is_some_and(|r| (200..300).contains(&r.status_code))
    }
}

/// What an existing output file already answers.
#[derive(Debug, Default)]
pub struct Answered {
    ids: HashSet<u128>,
    /// Lines kept from an earlier run.
    pub lines: u64,
}

impl Answered {
    pub fn contains(&self, custom_id: &str) -> bool {
        self.ids.contains(&fingerprint(custom_id))
    }
}

/// Makes the output ready to append to and returns what it answers already. A last line cut short
/// (the process died while writing it) is dropped, so its request is sent again. With `retry_failed`
/// the lines of failed requests are dropped too (the file is rewritten), so those are sent again.
/// With `look_only` nothing is changed (and a missing file answers nothing).
pub fn prepare(path: &Path, retry_failed: bool, look_only: bool) -> Result<Answered, JobError> {
    let io_err = |err| JobError::io("output", path, err);
    if look_only && !path.exists() {
        return Ok(Answered::default());
    }
    let mut file = OpenOptions::new().read(true).write(!look_only).create(!look_only).truncate(false).open(path).map_err(io_err)?;
    if !look_only {
        drop_cut_line(&mut file).map_err(io_err)?;
    }
    let mut answered = Answered::default();
    let mut failed = 0;
    let mut reader = BufReader::with_capacity(1 << 16, &file);
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io_err)? == 0 || line.last() != Some(&b'\n') {
            break;
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let seen: Seen = serde_json::from_slice(&line).map_err(|err| {
            let message = format!("{} line {number} is not an output line of a batch ({err}): give another output file", path.display());
            JobError::Config(Error::config("output", message))
        })?;
        if retry_failed && !seen.ok() {
            failed += 1;
            continue;
        }
        answered.ids.insert(fingerprint(&seen.custom_id));
        answered.lines += 1;
    }
    if failed > 0 && !look_only {
        keep_only_ok(path).map_err(io_err)?;
    }
    Ok(answered)
}

/// Cuts the file after its last newline: whatever follows is a line whose writing was interrupted.
fn drop_cut_line(file: &mut File) -> io::Result<()> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0; 4096];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        if let Some(at) = part.iter().rposition(|&b| b == b'\n') {
            end = start + at as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        file.set_len(end)?;
        file.sync_all()?;
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(())
}

/// Rewrites the output with the lines of successful requests only (a new file renamed over it, so a
/// crash leaves one or the other whole).
fn keep_only_ok(path: &Path) -> io::Result<()> {
    let kept_path = sibling(path, ".retry-failed.tmp");
    let mut kept = io::BufWriter::new(File::create(&kept_path)?);
    for line in BufReader::new(File::open(path)?).lines() {
        let line = line?;
        if serde_json::from_str::<Seen>(&line).is_ok_and(|seen| seen.ok()) {
            kept.write_all(line.as_bytes())?;
            kept.write_all(b"\n")?;
        }
    }
    kept.into_inner().map_err(|err| err.into_error())?.sync_all()?;
    fs::rename(&kept_path, path)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    path.with_file_name(name)
}

/// Appends whole lines to the output, each in one `write` to a file opened for appending: it is in
/// the kernel's hands (a `kill -9` of this process loses none of it) as soon as the call returns, and
/// lines written from several tasks never interleave.
pub struct Appender {
    file: File,
    /// The first write that failed; the job stops on it.
    failed: Mutex<Option<io::Error>>,
}

impl Appender {
    pub fn open(path: &Path) -> Result<Self, JobError> {
        let file = OpenOptions::new().append(true).open(path).map_err(|err| JobError::io("output", path, err))?;
        Ok(Self { file, failed: Mutex::new(None) })
    }

    /// Appends `line` (which ends with a newline); false when it could not be written.
    pub fn append(&self, line: &[u8]) -> bool {
        match (&self.file).write_all(line) {
            Ok(()) => true,
            Err(err) => {
                self.failed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get_or_insert(err);
                false
            }
        }
    }

    /// Whether a write failed.
    pub fn has_failed(&self) -> bool {
        self.failed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_some()
    }

    /// The first write that failed, if any.
    pub fn take_error(&self) -> Option<io::Error> {
        self.failed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, content: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("holysheep-output-{}-{name}", std::process::id()));
        fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn an_answer_becomes_a_batch_api_output_line() {
        let line = line("a", Ok(Answer { status_code: 200, request_id: Some("r1"), body: b"{\n  \"x\": 1,\n  \"s\": \"a b\"\n}", json: true }));
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["custom_id"], "a");
        assert_eq!(value["response"]["status_code"], 200);
        assert_eq!(value["response"]["request_id"], "r1");
        assert_eq!(value["response"]["body"]["x"], 1);
        assert_eq!(value["response"]["body"]["s"], "a b");
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        assert!(value["error"].is_null());
        assert!(value["id"].as_str().unwrap().starts_with("batch_req_"));
        assert_eq!(line.last(), Some(&b'\n'));
    }

    #[test]
    fn a_body_that_is_not_json_is_kept_as_text_and_a_failure_as_an_error() {
        let text: serde_json::Value = serde_json::from_slice(&line("a", Ok(Answer { status_code: 502, request_id: None, body: b"<html>", json: false }))).unwrap();
        assert_eq!(text["response"]["body"], "<html>");
        let failed: serde_json::Value = serde_json::from_slice(&line("b", Err(("timeout", "no answer in 2 s")))).unwrap();
        assert!(failed["response"].is_null());
        assert_eq!(failed["error"]["code"], "timeout");
    }

    #[test]
    fn a_line_cut_short_is_dropped_and_its_request_not_counted_answered() {
        let ok = String::from_utf8(line("a", Ok(Answer { status_code: 200, request_id: None, body: b"{}", json: true }))).unwrap();
        let path = temp("cut", &format!("{ok}{{\"id\": \"batch_req_1\", \"custom_id\": \"b\", \"resp"));
        let answered = prepare(&path, false, false).unwrap();
        assert!(answered.contains("a") && !answered.contains("b"));
        assert_eq!(fs::read_to_string(&path).unwrap(), ok);
        fs::remove_file(path).unwrap();
    }

    #[test]
    fn retry_failed_keeps_only_the_lines_that_succeeded() {
        let ok = String::from_utf8(line("a", Ok(Answer { status_code: 200, request_id: None, body: b"{}", json: true }))).unwrap();
        let http = String::from_utf8(line("b", Ok(Answer { status_code: 500, request_id: None, body: b"{}", json: true }))).unwrap();
        let error = String::from_utf8(line("c", Err(("timeout", "slow")))).unwrap();
        let path = temp("retry", &format!("{ok}{http}{error}"));
        let answered = prepare(&path, true, false).unwrap();
        assert!(answered.contains("a") && !answered.contains("b") && !answered.contains("c"));
        assert_eq!(fs::read_to_string(&path).unwrap(), ok);
        fs::remove_file(path).unwrap();
    }
}
