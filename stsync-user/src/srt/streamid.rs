//! The stream ID syntax the relay accepts: `#!::r=<hex>,s=<hex>,m=publish|request`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Publish,
    Request,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Publish => "publish",
            Mode::Request => "request",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamId {
    /// Lower-case hex, as written in config.json's stream ids after normalisation.
    pub resource: String,
    pub session: String,
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    #[error("stream ID is not of the form #!::r=<hex>,s=<hex>,m=<mode>")]
    Malformed,
    #[error("mode is neither publish nor request")]
    BadMode,
}

/// Parses a stream ID. VLC sends the ID as written in its URL (a literal `#` would be cut
/// off as a fragment), so an ID starting with `%23` (an encoded `#`) is percent-decoded
/// first, strictly: a `%` not followed by two hex digits makes it malformed.
pub fn parse(raw: &[u8]) -> Result<StreamId, StreamIdError> {
    let decoded;
    let raw = if raw.starts_with(b"%23") {
        decoded = percent_decode_strict(raw)?;
        &decoded[..]
    } else {
        raw
    };
    let text = std::str::from_utf8(raw).map_err(|_| StreamIdError::Malformed)?;
    let body = text.strip_prefix("#!::").ok_or(StreamIdError::Malformed)?;
    let (mut r, mut s, mut m) = (None, None, None);
    for pair in body.split(',') {
        let (k, v) = pair.split_once('=').ok_or(StreamIdError::Malformed)?;
        let slot = match k {
            "r" => &mut r,
            "s" => &mut s,
            "m" => &mut m,
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(StreamIdError::Malformed);
        }
    }
    let (r, s, m) = (
        r.ok_or(StreamIdError::Malformed)?,
        s.ok_or(StreamIdError::Malformed)?,
        m.ok_or(StreamIdError::Malformed)?,
    );
    let resource = normalize_hex(r).ok_or(StreamIdError::Malformed)?;
    let session = normalize_hex(s).ok_or(StreamIdError::Malformed)?;
    let mode = match m {
        "publish" => Mode::Publish,
        "request" => Mode::Request,
        _ => return Err(StreamIdError::BadMode),
    };
    Ok(StreamId {
        resource,
        session,
        mode,
    })
}

fn percent_decode_strict(raw: &[u8]) -> Result<Vec<u8>, StreamIdError> {
    let hex = |b: u8| (b as char).to_digit(16).ok_or(StreamIdError::Malformed);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let (hi, lo) = (raw.get(i + 1), raw.get(i + 2));
            let (Some(&hi), Some(&lo)) = (hi, lo) else {
                return Err(StreamIdError::Malformed);
            };
            out.push((hex(hi)? * 16 + hex(lo)?) as u8);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Lower-cases a hex string and strips leading zeros, so `r=01` and `r=1` name one resource.
/// `None` when it is empty, too long or not hex.
pub fn normalize_hex(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let t = s.trim_start_matches('0');
    Some(if t.is_empty() {
        "0".into()
    } else {
        t.to_ascii_lowercase()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_form() {
        let id = parse(b"#!::r=1,s=91BF7a9ed500c8ce,m=publish").unwrap();
        assert_eq!(
            id,
            StreamId {
                resource: "1".into(),
                session: "91bf7a9ed500c8ce".into(),
                mode: Mode::Publish
            }
        );
        // Key order and extra standard keys do not matter.
        let id = parse(b"#!::m=request,u=bob,s=0a,r=0001").unwrap();
        assert_eq!(
            (id.resource.as_str(), id.session.as_str(), id.mode),
            ("1", "a", Mode::Request)
        );
    }

    #[test]
    fn accepts_vlc_percent_encoding() {
        let id = parse(b"%23!::r=1,s=ab,m=request").unwrap();
        assert_eq!(id.mode, Mode::Request);
        // Everything encoded, as a URL encoder might.
        let id = parse(b"%23%21%3A%3Ar%3D1%2Cs%3DAB%2Cm%3Dpublish").unwrap();
        assert_eq!((id.session.as_str(), id.mode), ("ab", Mode::Publish));
        // Strict: bad escapes, or a decoded ID without the `#!::` syntax, are malformed.
        assert_malformed(&[
            &b"%23!::r=1,s=ab,m=request%2"[..],
            b"%23!::r=1,s=ab,m=request%",
            b"%23!::r=1,s=a%zz,m=request",
            b"%23%23!::r=1,s=ab,m=request",
            b"%23r=1,s=ab,m=request",
            b"%23!::r=1,s=ab,m=request%FF",
        ]);
    }

    fn assert_malformed(cases: &[&[u8]]) {
        for bad in cases {
            assert_eq!(
                parse(bad),
                Err(StreamIdError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn malformed_and_bad_mode() {
        assert_malformed(&[
            &b""[..],
            b"r=1,s=1,m=publish",
            b"#!::r=1,s=1",
            b"#!::r=1,s=zz,m=publish",
            b"#!::r=,s=1,m=publish",
            b"#!::r=1,r=2,s=1,m=publish",
            b"#!::r=1;s=1;m=publish",
            b"#!::{r=1,s=1,m=publish}",
            b"\xff\xfe",
        ]);
        assert_eq!(parse(b"#!::r=1,s=1,m=play"), Err(StreamIdError::BadMode));
    }
}
