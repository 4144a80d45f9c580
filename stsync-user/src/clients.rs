//! Ready-to-paste commands for the SRT clients people use, for one stream and session key:
//! what `stsync-proxy session` prints and the README shows. The client tests run these same
//! command lines (with the output sink swapped for a file where a player would open a
//! window).

use crate::srt::streamid::Mode;

/// Where clients reach the relay, and what they ask for.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub resource: String,
    pub key: String,
    pub mode: Mode,
    /// The passphrase the connection encrypts with (SRT's `passphrase`), if any.
    pub passphrase: Option<String>,
    /// The AES key length (bytes) it encrypts with (SRT's `pbkeylen`), if it says.
    pub pbkeylen: Option<u8>,
}

impl Target {
    /// The stream ID, as `#!::r=…,s=…,m=…`.
    pub fn stream_id(&self) -> String {
        format!(
            "#!::r={},s={},m={}",
            self.resource,
            self.key,
            self.mode.as_str()
        )
    }

    /// `srt://host:port?streamid=#!::…` (libsrt-based clients parse the query themselves,
    /// so the `#` stays literal).
    pub fn url(&self) -> String {
        let mut secret = self
            .passphrase
            .as_ref()
            .map_or(String::new(), |p| format!("&passphrase={p}"));
        if let Some(n) = self.pbkeylen {
            secret += &format!("&pbkeylen={n}");
        }
        format!(
            "srt://{}:{}?streamid={}{secret}",
            self.host,
            self.port,
            self.stream_id()
        )
    }

    /// The URL with the `#` percent-encoded: VLC sends the query as written, and a literal
    /// `#` would be cut off as a URL fragment. The relay decodes it.
    pub fn url_encoded(&self) -> String {
        self.url().replacen("streamid=#", "streamid=%23", 1)
    }
}

/// One client's command (a shell command line), or its settings in words for OBS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub client: &'static str,
    pub text: String,
}

/// The command for each client that can do `t.mode`. `input`/`output` name the file or
/// device a publisher reads and a recorder writes (players show the stream instead).
pub fn invocations(t: &Target, input: &str) -> Vec<Invocation> {
    let url = t.url();
    let sid = t.stream_id();
    let addr = format!("srt://{}:{}", t.host, t.port);
    // GStreamer and VLC take the passphrase and key length as options of their own.
    let (mut gst_secret, mut vlc_secret) = match &t.passphrase {
        Some(p) => (format!(" passphrase={p}"), format!(" --passphrase={p}")),
        None => (String::new(), String::new()),
    };
    if let Some(n) = t.pbkeylen {
        gst_secret += &format!(" pbkeylen={n}");
        vlc_secret += &format!(" --key-length={n}");
    }
    let inv = |client, text: String| Invocation { client, text };
    match t.mode {
        Mode::Publish => vec![
            inv(
                "ffmpeg",
                format!("ffmpeg -re -i {input} -c copy -f mpegts '{url}'"),
            ),
            inv(
                "srt-live-transmit",
                format!(
                    "ffmpeg -re -i {input} -c copy -f mpegts - | srt-live-transmit file://con '{url}'"
                ),
            ),
            inv(
                "gstreamer",
                format!(
                    "gst-launch-1.0 filesrc location={input} ! tsparse set-timestamps=true ! srtsink uri={addr} streamid='{sid}'{gst_secret} sync=true"
                ),
            ),
            inv(
                "obs",
                format!(
                    "Settings > Stream: Service \"Custom...\", Server \"{url}\", Stream Key left empty"
                ),
            ),
        ],
        Mode::Request => vec![
            inv("ffplay", format!("ffplay -fflags nobuffer '{url}'")),
            inv("ffmpeg", format!("ffmpeg -i '{url}' -c copy -f mpegts out.ts")),
            inv(
                "srt-live-transmit",
                format!("srt-live-transmit '{url}' file://con > out.ts"),
            ),
            inv("vlc", format!("vlc{vlc_secret} '{}'", t.url_encoded())),
            inv(
                "gstreamer",
                format!(
                    "gst-launch-1.0 srtsrc uri={addr} streamid='{sid}'{gst_secret} ! tsdemux ! decodebin ! autovideosink"
                ),
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_commands() {
        let t = Target {
            host: "relay.example".into(),
            port: 9999,
            resource: "1".into(),
            key: "91bf7a9ed500c8ce".into(),
            mode: Mode::Request,
            passphrase: None,
            pbkeylen: None,
        };
        assert_eq!(
            t.url(),
            "srt://relay.example:9999?streamid=#!::r=1,s=91bf7a9ed500c8ce,m=request"
        );
        assert_eq!(
            t.url_encoded(),
            "srt://relay.example:9999?streamid=%23!::r=1,s=91bf7a9ed500c8ce,m=request"
        );
        let view: Vec<&str> = invocations(&t, "-").iter().map(|i| i.client).collect();
        assert_eq!(
            view,
            ["ffplay", "ffmpeg", "srt-live-transmit", "vlc", "gstreamer"]
        );
        let publish = invocations(
            &Target {
                mode: Mode::Publish,
                ..t.clone()
            },
            "in.ts",
        );
        assert!(publish[0].text.starts_with("ffmpeg -re -i in.ts"));
        assert!(publish.iter().any(|i| i.client == "obs"));
        // An encrypted session: every client gets its passphrase and key length.
        let secret = Target {
            passphrase: Some("0123456789abcdef".into()),
            pbkeylen: Some(24),
            ..t
        };
        assert!(secret
            .url()
            .ends_with("m=request&passphrase=0123456789abcdef&pbkeylen=24"));
        for i in invocations(&secret, "-") {
            assert!(
                i.text.contains("0123456789abcdef") && i.text.contains("24"),
                "{}: {}",
                i.client,
                i.text
            );
        }
    }

    /// The README's client commands are these, word for word (OBS is prose there).
    #[test]
    fn readme_shows_the_printed_commands() {
        let readme = include_str!("../../README.md");
        for mode in [Mode::Request, Mode::Publish] {
            let t = Target {
                host: "relay".into(),
                port: 9999,
                resource: "1".into(),
                key: "<key>".into(),
                mode,
                passphrase: None,
                pbkeylen: None,
            };
            for i in invocations(&t, "input.ts") {
                if i.client == "obs" {
                    assert!(readme.contains(&t.url()), "OBS server URL missing");
                    continue;
                }
                assert!(
                    readme.contains(&i.text),
                    "README lacks the {} command:\n{}",
                    i.client,
                    i.text
                );
            }
        }
    }
}
