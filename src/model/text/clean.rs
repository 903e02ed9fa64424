//! Prompt cleaning before tokenisation, as scepter's `ACETextEmbedder` does it (`CLEAN:
//! whitespace`): `whitespace_clean(basic_clean(text))`, where `basic_clean` is `ftfy.fix_text`,
//! `html.unescape` applied twice, and a strip, and `whitespace_clean` collapses every run of
//! whitespace to one space and strips again.
//!
//! ftfy is a Python library; this module carries the parts of `fix_text` that change real
//! prompts: HTML entities (only when the text holds no `<`, as ftfy does), terminal colour
//! escapes, mojibake (UTF-8 read as Windows-1252/Latin-1, e.g. `cafÃ©` -> `café`, `â€™` -> `’`),
//! C1 control characters read as Windows-1252, Latin ligatures, full-width forms, curly quotes,
//! control characters, and NFC normalisation. Where ftfy decides by a "badness" score whether a
//! run of characters is mojibake, this module decodes every run that forms well-formed UTF-8 in
//! Windows-1252 (runs such as `Ã©` that rarely occur in real text). `html.unescape` is exact
//! for numeric references and covers the HTML 4 named entities (Latin-1 set, `amp`, `lt`, `gt`,
//! `quot`, `apos`) and the common typographic ones; other HTML5 names stay as written.

use crate::{Error, Result};
use tokenizers::NormalizedString;

/// The cleaning strategies of scepter's text embedders (`CLEAN` in the model YAML).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clean {
    /// No cleaning (an empty or absent `CLEAN`).
    None,
    /// `whitespace_clean(basic_clean(text))`: the ACE default.
    #[default]
    Whitespace,
    /// As `Whitespace`, then lower-cased.
    Lower,
    /// `canonicalize(basic_clean(text))`: underscores to spaces, ASCII punctuation removed,
    /// lower-cased, whitespace collapsed.
    Canonicalize,
}

impl std::str::FromStr for Clean {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "" | "none" | "None" => Ok(Clean::None),
            "whitespace" => Ok(Clean::Whitespace),
            "lower" => Ok(Clean::Lower),
            "canonicalize" => Ok(Clean::Canonicalize),
            other => Err(Error::invalid(
                "text CLEAN",
                format!("'{other}' (supported: whitespace, lower, canonicalize, none)"),
            )),
        }
    }
}

impl Clean {
    /// Cleans one prompt.
    pub fn apply(self, text: &str) -> String {
        match self {
            Clean::None => text.to_string(),
            Clean::Whitespace => whitespace_clean(&basic_clean(text)),
            Clean::Lower => whitespace_clean(&basic_clean(text)).to_lowercase(),
            Clean::Canonicalize => canonicalize(&basic_clean(text)),
        }
    }
}

/// `ftfy.fix_text`, then `html.unescape` twice, then strip.
pub fn basic_clean(text: &str) -> String {
    let text = fix_text(text);
    let text = html_unescape(&html_unescape(&text));
    text.trim().to_string()
}

/// Every run of whitespace becomes one space; leading and trailing whitespace goes.
pub fn whitespace_clean(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// scepter's `canonicalize`: `_` to space, ASCII punctuation removed, lower case, whitespace
/// collapsed.
pub fn canonicalize(text: &str) -> String {
    let kept: String = text
        .replace('_', " ")
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    whitespace_clean(&kept.to_lowercase())
}

/// The subset of `ftfy.fix_text` described in the module comment, in ftfy's order.
pub fn fix_text(text: &str) -> String {
    let text = if text.contains('<') {
        text.to_string()
    } else {
        html_unescape(text)
    };
    let text = remove_terminal_escapes(&text);
    let text = fix_mojibake(&text);
    let text: String = text
        .chars()
        .map(c1_to_windows_1252)
        .flat_map(fix_ligature)
        .collect();
    let text = fix_character_width(&text);
    let text: String = text
        .chars()
        .map(uncurl_quote)
        .filter(|&c| !is_ftfy_control(c))
        .collect();
    let mut normalized = NormalizedString::from(text.as_str());
    normalized.nfc();
    normalized.get().to_string()
}

/// Removes ANSI terminal escapes `ESC [ digits-and-semicolons letter`.
fn remove_terminal_escapes(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\x1b' && chars.get(i + 1) == Some(&'[') {
            let mut j = i + 2;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == ';') {
                j += 1;
            }
            if j < chars.len() && chars[j].is_ascii_alphabetic() {
                i = j + 1;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Windows-1252 characters for bytes 0x80..=0x9F; the five bytes Windows-1252 leaves undefined
/// map to the C1 control of the same value (as Python's HTML character references do).
const WINDOWS_1252_HIGH: [char; 32] = [
    '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{2c6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}', '\u{8f}',
    '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}', '\u{178}',
];

/// The byte a character stands for when UTF-8 text was wrongly decoded as Windows-1252 (or
/// Latin-1, for the C1 controls).
fn windows_1252_byte(c: char) -> Option<u8> {
    let code = c as u32;
    if code < 0x100 {
        return Some(code as u8);
    }
    WINDOWS_1252_HIGH
        .iter()
        .position(|&w| w == c)
        .map(|i| 0x80 + i as u8)
}

/// Decodes each run of characters whose Windows-1252 bytes form one well-formed multi-byte UTF-8
/// character.
fn fix_mojibake(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if let Some((decoded, used)) = utf8_sequence_at(&chars[i..]) {
            out.push(decoded);
            i += used;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

fn utf8_sequence_at(chars: &[char]) -> Option<(char, usize)> {
    let lead = windows_1252_byte(*chars.first()?)?;
    let len = match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return None,
    };
    let bytes: Vec<u8> = chars
        .get(..len)?
        .iter()
        .map(|&c| windows_1252_byte(c))
        .collect::<Option<_>>()?;
    let decoded = std::str::from_utf8(&bytes).ok()?;
    decoded.chars().next().map(|c| (c, len))
}

fn c1_to_windows_1252(c: char) -> char {
    match c as u32 {
        code @ 0x80..=0x9F => WINDOWS_1252_HIGH[(code - 0x80) as usize],
        _ => c,
    }
}

fn fix_ligature(c: char) -> Vec<char> {
    let s = match c {
        '\u{fb00}' => "ff",
        '\u{fb01}' => "fi",
        '\u{fb02}' => "fl",
        '\u{fb03}' => "ffi",
        '\u{fb04}' => "ffl",
        '\u{fb05}' => "\u{17f}t",
        '\u{fb06}' => "st",
        '\u{132}' => "IJ",
        '\u{133}' => "ij",
        '\u{149}' => "\u{2bc}n",
        '\u{1c4}' => "D\u{17d}",
        '\u{1c5}' => "D\u{17e}",
        '\u{1c6}' => "d\u{17e}",
        '\u{1c7}' => "LJ",
        '\u{1c8}' => "Lj",
        '\u{1c9}' => "lj",
        '\u{1ca}' => "NJ",
        '\u{1cb}' => "Nj",
        '\u{1cc}' => "nj",
        _ => return vec![c],
    };
    s.chars().collect()
}

/// Full-width and half-width forms (U+FF01..U+FFEF) to their NFKC equivalents, and the
/// ideographic space to a space, as ftfy's `fix_character_width`.
fn fix_character_width(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c as u32 {
            0x3000 => out.push(' '),
            0xFF01..=0xFFEF => {
                let mut n = NormalizedString::from(c.to_string().as_str());
                n.nfkc();
                out.push_str(n.get());
            }
            _ => out.push(c),
        }
    }
    out
}

fn uncurl_quote(c: char) -> char {
    match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
        '\u{201c}'..='\u{201f}' => '"',
        _ => c,
    }
}

/// The characters ftfy's `remove_control_chars` deletes.
fn is_ftfy_control(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF
        | 0xFFF9..=0xFFFC | 0x1D173..=0x1D17A | 0xE0000..=0xE007F)
}

/// Python's `html.unescape`: numeric character references with the HTML5 replacement rules,
/// and named references (see the module comment for which names are known).
pub fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (replacement, used) = reference_at(after).unwrap_or_else(|| ("&".to_string(), 0));
        out.push_str(&replacement);
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

/// The replacement for the reference that starts right after a `&`, and how many bytes of
/// `after` it consumed; `None` when no reference starts there.
fn reference_at(after: &str) -> Option<(String, usize)> {
    if let Some(num) = after.strip_prefix('#') {
        let (digits, radix, skip) = match num.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16, 2),
            None => (num, 10, 1),
        };
        let len = digits
            .find(|c: char| !c.is_digit(radix))
            .unwrap_or(digits.len());
        if len == 0 {
            return None;
        }
        let semicolon = usize::from(digits[len..].starts_with(';'));
        let value = u32::from_str_radix(&digits[..len], radix).unwrap_or(u32::MAX);
        return Some((numeric_reference(value), skip + len + semicolon));
    }
    let len = after
        .char_indices()
        .take_while(|&(_, c)| !matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';'))
        .take(32)
        .last()
        .map(|(i, c)| i + c.len_utf8())?;
    let name = &after[..len];
    if after[len..].starts_with(';') {
        if let Some(value) = named_entity(name) {
            return Some((value.to_string(), len + 1));
        }
    }
    // Python takes the longest prefix of the name that is a legacy entity (one valid without a
    // semicolon), at least two characters long.
    let mut ends: Vec<usize> = name.char_indices().map(|(i, _)| i).skip(2).collect();
    ends.push(len);
    ends.into_iter()
        .rev()
        .find_map(|end| legacy_entity(&name[..end]).map(|value| (value.to_string(), end)))
}

fn numeric_reference(value: u32) -> String {
    match value {
        0x00 => "\u{fffd}".into(),
        0x0D => "\r".into(),
        0x80..=0x9F => WINDOWS_1252_HIGH[(value - 0x80) as usize].to_string(),
        0xD800..=0xDFFF | 0x110000.. => "\u{fffd}".into(),
        0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0xFDD0..=0xFDEF => String::new(),
        v if v & 0xFFFE == 0xFFFE => String::new(),
        v => char::from_u32(v).map(String::from).unwrap_or_default(),
    }
}

/// Named entities of HTML 4 for U+00A0..=U+00FF, in code point order; all are legacy names
/// that Python also accepts without the closing semicolon.
const LATIN_1_ENTITIES: [&str; 96] = [
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf",
    "laquo", "not", "shy", "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro",
    "para", "middot", "cedil", "sup1", "ordm", "raquo", "frac14", "frac12", "frac34", "iquest",
    "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig", "Ccedil", "Egrave", "Eacute",
    "Ecirc", "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve", "Oacute",
    "Ocirc", "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute",
    "THORN", "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil",
    "egrave", "eacute", "ecirc", "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde",
    "ograve", "oacute", "ocirc", "otilde", "ouml", "divide", "oslash", "ugrave", "uacute", "ucirc",
    "uuml", "yacute", "thorn", "yuml",
];

/// Entities valid without a semicolon (Python's legacy set, restricted to the known names).
fn legacy_entity(name: &str) -> Option<char> {
    let c = match name {
        "amp" | "AMP" => '&',
        "lt" | "LT" => '<',
        "gt" | "GT" => '>',
        "quot" | "QUOT" => '"',
        "COPY" => '\u{a9}',
        "REG" => '\u{ae}',
        _ => {
            let i = LATIN_1_ENTITIES.iter().position(|&n| n == name)?;
            return char::from_u32(0xA0 + i as u32);
        }
    };
    Some(c)
}

/// Entities that need their semicolon, besides the legacy ones.
fn named_entity(name: &str) -> Option<char> {
    if let Some(c) = legacy_entity(name) {
        return Some(c);
    }
    let code = match name {
        "apos" => 0x27,
        "OElig" => 0x152,
        "oelig" => 0x153,
        "Scaron" => 0x160,
        "scaron" => 0x161,
        "Yuml" => 0x178,
        "fnof" => 0x192,
        "circ" => 0x2C6,
        "tilde" => 0x2DC,
        "ensp" => 0x2002,
        "emsp" => 0x2003,
        "thinsp" => 0x2009,
        "zwnj" => 0x200C,
        "zwj" => 0x200D,
        "lrm" => 0x200E,
        "rlm" => 0x200F,
        "ndash" => 0x2013,
        "mdash" => 0x2014,
        "lsquo" => 0x2018,
        "rsquo" => 0x2019,
        "sbquo" => 0x201A,
        "ldquo" => 0x201C,
        "rdquo" => 0x201D,
        "bdquo" => 0x201E,
        "dagger" => 0x2020,
        "Dagger" => 0x2021,
        "bull" => 0x2022,
        "hellip" => 0x2026,
        "permil" => 0x2030,
        "prime" => 0x2032,
        "Prime" => 0x2033,
        "lsaquo" => 0x2039,
        "rsaquo" => 0x203A,
        "euro" => 0x20AC,
        "trade" => 0x2122,
        "larr" => 0x2190,
        "uarr" => 0x2191,
        "rarr" => 0x2192,
        "darr" => 0x2193,
        "harr" => 0x2194,
        "minus" => 0x2212,
        "infin" => 0x221E,
        "ne" => 0x2260,
        "le" => 0x2264,
        "ge" => 0x2265,
        "spades" => 0x2660,
        "clubs" => 0x2663,
        "hearts" => 0x2665,
        "diams" => 0x2666,
        _ => return None,
    };
    char::from_u32(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (input, output) pairs computed with Python: ftfy 6 `fix_text`, `html.unescape` twice,
    /// strip, `regex.sub(r'\s+', ' ', ...)`, strip.
    const PYTHON_PAIRS: &[(&str, &str)] = &[
        (
            "make the boy cry, his eyes filled with tears",
            "make the boy cry, his eyes filled with tears",
        ),
        (
            "  Adapt {image}   into a mosaic.  ",
            "Adapt {image} into a mosaic.",
        ),
        ("", ""),
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("Tom &amp;amp; Jerry", "Tom & Jerry"),
        ("a &lt;b&gt; tag", "a <b> tag"),
        ("it&rsquo;s &ldquo;fine&rdquo;", "it's \"fine\""),
        ("it\u{2019}s \u{201c}quoted\u{201d}", "it's \"quoted\""),
        ("caf&eacute; cr&egrave;me", "caf\u{e9} cr\u{e8}me"),
        ("&#39;single&#39; and &#x27;hex&#x27;", "'single' and 'hex'"),
        ("x &#128512; y", "x \u{1f600} y"),
        ("&copy 2024 &ampersand", "\u{a9} 2024 &ersand"),
        ("fi\u{fb01}ne \u{fb02}ow", "fifine flow"),
        ("\u{ff21}\u{ff22}\u{ff23}\u{3000}\u{ff11}\u{ff12}", "ABC 12"),
        ("tab\tnew\nline\r\nend", "tab new line end"),
        ("ctrl\x00\x07char\u{feff}s", "ctrlchars"),
        ("e\u{301} combining", "\u{e9} combining"),
        ("<b>bold &amp; keep</b>", "<b>bold & keep</b>"),
        ("\x1b[31mred\x1b[0m text", "red text"),
        ("nbsp\u{a0}space and\u{2003}em", "nbsp space and em"),
        (
            "&unknown; &#0; &#x110000; &#150;",
            "&unknown; \u{fffd} \u{fffd} \u{2013}",
        ),
        ("caf\u{c3}\u{a9}", "caf\u{e9}"),
        ("price \u{96} ten", "price \u{2013} ten"),
        ("\u{c2}\u{a3}5 only", "\u{a3}5 only"),
        ("caf\u{e9} and caf\u{c3}\u{a9}", "caf\u{e9} and caf\u{e9}"),
        (
            "na\u{ef}ve \u{e2}\u{20ac}\u{153}quoted\u{e2}\u{20ac}\u{9d}",
            "na\u{ef}ve \"quoted\"",
        ),
        ("\u{e2}\u{20ac}\u{2122}", "'"),
        ("x\u{2028}y\u{85}z", "x y\u{2026}z"),
        ("\u{fb03} \u{fb06}", "ffi st"),
    ];

    #[test]
    fn whitespace_clean_matches_python_reference() {
        for (input, expected) in PYTHON_PAIRS {
            assert_eq!(Clean::Whitespace.apply(input), *expected, "input {input:?}");
        }
    }

    #[test]
    fn other_strategies() {
        assert_eq!(Clean::None.apply("  A  b "), "  A  b ");
        assert_eq!(Clean::Lower.apply("  Make IT   red "), "make it red");
        assert_eq!(Clean::Canonicalize.apply("a_b, C-d!  e"), "a b cd e");
        assert_eq!("whitespace".parse::<Clean>().unwrap(), Clean::Whitespace);
        assert_eq!("".parse::<Clean>().unwrap(), Clean::None);
        let err = "heavy".parse::<Clean>().unwrap_err().to_string();
        assert!(err.contains("heavy"), "{err}");
    }

    #[test]
    fn html_unescape_edge_cases() {
        assert_eq!(html_unescape("a & b"), "a & b");
        assert_eq!(html_unescape("&#"), "&#");
        assert_eq!(html_unescape("&#x;"), "&#x;");
        assert_eq!(html_unescape("&#65&#x42;C"), "ABC");
        assert_eq!(html_unescape("&notit;"), "\u{ac}it;");
        assert_eq!(html_unescape("&hellip;&euro;"), "\u{2026}\u{20ac}");
        assert_eq!(html_unescape("&hellip"), "&hellip");
        assert_eq!(html_unescape("&#x7f;|&#xfffe;|&#xd800;"), "||\u{fffd}");
    }
}
