//! Logs and metrics: `tracing` to stdout (human or JSON) and a Prometheus recorder
//! shared by every server in the process.

use std::{fmt, marker::PhantomData, sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::{
    field::{Field, Visit},
    span, Subscriber,
};
use tracing_subscriber::{
    field::{MakeVisitor, VisitFmt, VisitOutput},
    fmt::{
        format::{DefaultVisitor, JsonFields, Writer},
        FormatFields, FormattedFields,
    },
    layer::{Context, SubscriberExt as _},
    registry::LookupSpan,
    util::SubscriberInitExt as _,
    EnvFilter, Layer,
};

use crate::config::LogFormat;

/// Installs the global log subscriber; the level comes from `SURGE_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SURGE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn,refinery_core=warn"));
    // Colours only for a terminal: escape codes are noise in a log file or collector,
    // and formatting them cost a tenth of a request.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    if let Err(err) = subscriber(format, ansi, filter, std::io::stdout).try_init() {
        eprintln!("logging was already set up: {err}");
    }
}

/// The log subscriber: `filter`, then [`SpanFields`] where it helps, then the format,
/// written to `writer`.
fn subscriber<W>(
    format: LogFormat,
    ansi: bool,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Human => Box::new(
            registry
                .with((!ansi).then(SpanFields::<PlainFields>::new))
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(writer)
                        .with_ansi(ansi)
                        .with_target(false)
                        .fmt_fields(PlainFields),
                ),
        ),
        LogFormat::Json => Box::new(
            registry.with(SpanFields::<JsonFields>::new()).with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(ansi)
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            ),
        ),
    }
}

/// Bytes reserved for a span's formatted fields: a request's id, method, path and
/// status fit.
const SPAN_FIELDS_CAPACITY: usize = 160;

/// Formats each new span's fields with `N` into a buffer reserved at once, before the
/// log layer would, which then finds them formatted and keeps them.
///
/// The log layer starts from an empty string and grows it field by field: four
/// reallocations for a request's span, more than the formatting itself. Placed between
/// the filter and the log layer: for JSON always, for the human format only where it
/// writes no colours (the buffer is formatted without them).
pub struct SpanFields<N>(PhantomData<fn(N)>);

impl<N> SpanFields<N> {
    /// The layer.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<N> Default for SpanFields<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S, N> Layer<S> for SpanFields<N>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + Default + 'static,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut fields = String::with_capacity(SPAN_FIELDS_CAPACITY);
        if N::default()
            .format_fields(Writer::new(&mut fields), attrs)
            .is_ok()
        {
            span.extensions_mut()
                .insert(FormattedFields::<N>::new(fields));
        }
    }
}

/// The human format's fields, written as tracing-subscriber's `DefaultFields` writes
/// them, without its cost where colours are off.
///
/// Every request opens a span whose fields are formatted when it opens, so this runs
/// tens of thousands of times a second. `DefaultFields` paints each field name through
/// a colour style even when colours are off, several formatting calls per field; here
/// a plain field is its name, `=` and its value's `Debug`, one formatting call. The
/// message, raw identifiers (`r#`), errors and coloured output take the default path
/// unchanged, so every line reads exactly as it did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainFields;

impl<'a> MakeVisitor<Writer<'a>> for PlainFields {
    type Visitor = PlainVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> Self::Visitor {
        PlainVisitor {
            writer,
            empty: true,
            result: Ok(()),
        }
    }
}

/// The visitor of [`PlainFields`].
pub struct PlainVisitor<'a> {
    writer: Writer<'a>,
    empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Whether `field` is one the plain path writes exactly as the default one does.
    fn plain(&self, field: &Field) -> bool {
        let name = field.name();
        self.result.is_ok()
            && !self.writer.has_ansi_escapes()
            && name != "message"
            && !name.starts_with("r#")
    }

    /// ` name` (no space before the first field), then `value` writes `=` and the value.
    fn write_plain(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        let w = &mut self.writer;
        let padded = if self.empty { Ok(()) } else { w.write_str(" ") };
        self.empty = false;
        self.result = padded
            .and_then(|()| w.write_str(field.name()))
            .and_then(|()| value(w));
    }

    /// The default visitor's way, on the same writer.
    fn by_default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.empty);
        record(&mut visitor);
        self.result = visitor.finish();
        self.empty = false;
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.plain(field) {
            self.by_default(|v| v.record_str(field, value));
        } else if debug_is_verbatim(value) {
            // What `{:?}` writes for this string, without escaping it char by char.
            self.write_plain(field, |w| {
                w.write_str("=\"")?;
                w.write_str(value)?;
                w.write_str("\"")
            });
        } else {
            self.write_plain(field, |w| write!(w, "={value:?}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.by_default(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.plain(field) {
            self.write_plain(field, |w| write!(w, "={value:?}"));
        } else {
            self.by_default(|v| v.record_debug(field, value));
        }
    }
}

/// Whether `str`'s `Debug` is the string itself in quotes: printable ASCII without a
/// quote or a backslash, as request ids, methods and most paths are.
///
/// Every byte is checked, without stopping at the first that fails: a loop without an
/// early exit compiles to vector instructions, 16 bytes a step, and the strings that
/// fail are the rare ones.
fn debug_is_verbatim(value: &str) -> bool {
    value.bytes().fold(true, |verbatim, b| {
        verbatim & (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\')
    })
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for PlainVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// Latency buckets in seconds, from 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process-wide Prometheus handle; the first call installs the recorder.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = builder
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            // Without the exporter's own listener, histograms need upkeep on a timer.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                });
            if let Err(err) = spawned {
                tracing::warn!(%err, "could not start metrics upkeep");
            }
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::ErrorKind::Other)?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner \"cause\"")]
    struct Inner;

    /// Every kind of field a log line here carries, inside a request-like span that
    /// also records a field after it opened.
    fn log_everything() {
        let span = tracing::info_span!(
            "request",
            request_id = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0ff",
            method = "GET",
            path = "/api/products/x",
            status = tracing::field::Empty,
        );
        let _entered = span.enter();
        span.record("status", 200u16);
        let error = Outer(Inner);
        let kind = "quoted \"str\"\n";
        let plain = "it's /a/b%20c?d=e&f";
        let unicode = "caf\u{e9} \\ \u{7f}";
        tracing::warn!(
            sku = %"SKU-1",
            quantity = 3i64,
            big = u64::MAX,
            ok = true,
            ratio = 0.5f64,
            r#type = "raw",
            kind,
            plain,
            unicode,
            debugged = ?Some("x"),
            error = &error as &(dyn std::error::Error + 'static),
            "a message with {} and \x1b[31m escapes",
            "args"
        );
        tracing::info!(message = "message as a field", other = 1);
        tracing::error!("message only");
    }

    /// What `log_everything` writes through `subscriber`, without timestamps.
    fn lines(subscriber: impl Subscriber + Send + Sync + 'static, buffer: &Buffer) -> String {
        tracing::subscriber::with_default(subscriber, log_everything);
        let bytes = buffer.0.lock().map(|b| b.clone()).unwrap_or_default();
        let text = String::from_utf8(bytes).expect("utf-8 log lines");
        text.lines()
            .map(
                |line| match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(mut json) => {
                        json.as_object_mut().map(|o| o.remove("timestamp"));
                        json.to_string()
                    }
                    // A human line: the timestamp is its first word.
                    Err(_) => line
                        .split_once(' ')
                        .map_or(line, |(_, rest)| rest)
                        .to_owned(),
                },
            )
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Ours: the subscriber `init_tracing` installs.
    fn ours(format: LogFormat, ansi: bool) -> String {
        let buffer = Buffer::default();
        let filter = EnvFilter::new("info");
        lines(subscriber(format, ansi, filter, buffer.clone()), &buffer)
    }

    /// tracing-subscriber's own formatting, as configured before the fast paths.
    fn stock(format: LogFormat, ansi: bool) -> String {
        let buffer = Buffer::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(ansi)
            .with_env_filter(EnvFilter::new("info"));
        match format {
            LogFormat::Human => lines(builder.with_target(false).finish(), &buffer),
            LogFormat::Json => lines(
                builder
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .finish(),
                &buffer,
            ),
        }
    }

    /// Guards the fast paths (`PlainFields`, `SpanFields`) against drifting from the
    /// format operators and their log queries know: the same lines, byte for byte, in
    /// both formats, with colours off and on.
    #[test]
    fn our_log_lines_are_the_stock_ones() {
        for format in [LogFormat::Human, LogFormat::Json] {
            for ansi in [false, true] {
                let (ours, stock) = (ours(format, ansi), stock(format, ansi));
                assert_eq!(ours, stock, "{format:?}, ansi: {ansi}");
                assert_eq!(ours.lines().count(), 3, "{ours}");
            }
        }
        let human = ours(LogFormat::Human, false);
        assert!(
            human.contains(
                "request{request_id=\"0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0ff\" method=\"GET\" \
                 path=\"/api/products/x\" status=200}"
            ),
            "{human}"
        );
        assert!(
            human.contains("quantity=3 big=18446744073709551615 ok=true"),
            "{human}"
        );
        let json = ours(LogFormat::Json, false);
        assert!(
            json.contains("\"span\":{\"method\":\"GET\",\"name\":\"request\""),
            "{json}"
        );
        assert!(json.contains("\"status\":200"), "{json}");
    }

    proptest::proptest! {
        /// Guards the vectorised check behind the quoted-string fast path: whatever it
        /// passes as verbatim, `{:?}` writes as the string itself in quotes, and every
        /// string of printable ASCII without a quote or a backslash passes.
        #[test]
        fn verbatim_strings_are_their_own_debug(value in "\\PC{0,80}|[ -~]{0,80}") {
            let verbatim = debug_is_verbatim(&value);
            if verbatim {
                proptest::prop_assert_eq!(format!("{value:?}"), format!("\"{value}\""));
            }
            let plain = value
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
            proptest::prop_assert_eq!(verbatim, plain);
        }
    }
}
