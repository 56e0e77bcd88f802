//! Reading WS-Management answers: elements by local name (AMT versions use different prefixes).
use quick_xml::events::Event;
use quick_xml::Reader;

/// The text of every element called `local` (any namespace), in document order.
pub(crate) fn texts(xml: &[u8], local: &str) -> Result<Vec<String>, String> {
    let mut r = Reader::from_reader(xml);
    r.config_mut().trim_text(true);
    let mut out = Vec::new();
    let mut depth_in: Option<usize> = None;
    let mut depth = 0usize;
    let mut cur = String::new();
    let mut buf = Vec::new();
    loop {
        match r.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => {
                depth += 1;
                if depth_in.is_none() && e.local_name().as_ref() == local.as_bytes() {
                    depth_in = Some(depth);
                    cur.clear();
                }
            }
            Ok(Event::Empty(e)) => {
                if depth_in.is_none() && e.local_name().as_ref() == local.as_bytes() {
                    out.push(String::new());
                }
            }
            Ok(Event::Text(t)) => {
                if depth_in.is_some() {
                    let t = t.unescape().map_err(|e| format!("bad XML text: {e}"))?;
                    cur.push_str(&t);
                }
            }
            Ok(Event::End(_)) => {
                if depth_in == Some(depth) {
                    out.push(std::mem::take(&mut cur));
                    depth_in = None;
                }
                depth = depth.saturating_sub(1);
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("not XML at byte {}: {e}", r.buffer_position())),
        }
        buf.clear();
    }
    Ok(out)
}

/// The first element called `local`'s text.
pub(crate) fn text(xml: &[u8], local: &str) -> Result<Option<String>, String> {
    Ok(texts(xml, local)?.into_iter().next())
}

/// A SOAP fault's reason (`Reason/Text`, else its subcode), if the answer is one.
pub(crate) fn fault(xml: &[u8]) -> Option<String> {
    if texts(xml, "Fault").ok()?.is_empty() {
        return None;
    }
    let reason = text(xml, "Text").ok().flatten().filter(|s| !s.is_empty());
    let code = texts(xml, "Value").ok().and_then(|v| v.last().cloned());
    Some(reason.or(code).unwrap_or_else(|| "a SOAP fault".into()))
}

/// Escapes text for an element's content.
pub(crate) fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_found_whatever_their_prefix() {
        let x = br#"<a:Envelope xmlns:a="x" xmlns:g="y"><a:Body><g:OUT><g:ReturnValue>0</g:ReturnValue></g:OUT><ReturnValue>2</ReturnValue></a:Body></a:Envelope>"#;
        assert_eq!(texts(x, "ReturnValue").unwrap(), vec!["0", "2"]);
        assert_eq!(text(x, "Nope").unwrap(), None);
        assert!(fault(x).is_none());
        let f = br#"<s:Envelope xmlns:s="x"><s:Body><s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>w:AccessDenied</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">Access denied</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>"#;
        assert_eq!(fault(f).as_deref(), Some("Access denied"));
        assert!(texts(b"<a><b></a>", "b").is_err());
    }
}
