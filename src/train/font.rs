//! A 5x7 pixel font for the labels of the loss plot (axis titles, tick values, the legend), so
//! that `loss.png` can be read without its log file and without shipping a font file. Covers
//! digits, lower-case letters and the punctuation of numbers; other characters draw as blanks.

use image::{Rgb, RgbImage};

/// Glyph width and height in pixels, and the advance between characters.
pub const WIDTH: u32 = 5;
pub const HEIGHT: u32 = 7;
pub const ADVANCE: u32 = WIDTH + 1;

/// Each glyph as seven rows of five columns, `#` for ink.
const GLYPHS: &[(char, [&str; 7])] = &[
    (
        '0',
        [
            " ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### ",
        ],
    ),
    (
        '1',
        [
            "  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ",
        ],
    ),
    (
        '2',
        [
            " ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####",
        ],
    ),
    (
        '3',
        [
            "#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### ",
        ],
    ),
    (
        '4',
        [
            "   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # ",
        ],
    ),
    (
        '5',
        [
            "#####", "#    ", "#### ", "    #", "    #", "#   #", " ### ",
        ],
    ),
    (
        '6',
        [
            "  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### ",
        ],
    ),
    (
        '7',
        [
            "#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   ",
        ],
    ),
    (
        '8',
        [
            " ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### ",
        ],
    ),
    (
        '9',
        [
            " ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  ",
        ],
    ),
    (
        '.',
        [
            "     ", "     ", "     ", "     ", "     ", " ##  ", " ##  ",
        ],
    ),
    (
        '-',
        [
            "     ", "     ", "     ", "#####", "     ", "     ", "     ",
        ],
    ),
    (
        '+',
        [
            "     ", "  #  ", "  #  ", "#####", "  #  ", "  #  ", "     ",
        ],
    ),
    (
        ':',
        [
            "     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     ",
        ],
    ),
    (
        '(',
        [
            "   # ", "  #  ", " #   ", " #   ", " #   ", "  #  ", "   # ",
        ],
    ),
    (
        ')',
        [
            " #   ", "  #  ", "   # ", "   # ", "   # ", "  #  ", " #   ",
        ],
    ),
    (
        'a',
        [
            "     ", "     ", " ### ", "    #", " ####", "#   #", " ####",
        ],
    ),
    (
        'b',
        [
            "#    ", "#    ", "# ## ", "##  #", "#   #", "#   #", "#### ",
        ],
    ),
    (
        'c',
        [
            "     ", "     ", " ### ", "#    ", "#    ", "#   #", " ### ",
        ],
    ),
    (
        'd',
        [
            "    #", "    #", " ## #", "#  ##", "#   #", "#   #", " ####",
        ],
    ),
    (
        'e',
        [
            "     ", "     ", " ### ", "#   #", "#####", "#    ", " ### ",
        ],
    ),
    (
        'f',
        [
            "  ## ", " #  #", " #   ", "###  ", " #   ", " #   ", " #   ",
        ],
    ),
    (
        'g',
        [
            "     ", " ####", "#   #", "#   #", " ####", "    #", " ### ",
        ],
    ),
    (
        'h',
        [
            "#    ", "#    ", "# ## ", "##  #", "#   #", "#   #", "#   #",
        ],
    ),
    (
        'i',
        [
            "  #  ", "     ", " ##  ", "  #  ", "  #  ", "  #  ", " ### ",
        ],
    ),
    (
        'j',
        [
            "   # ", "     ", "  ## ", "   # ", "   # ", "#  # ", " ##  ",
        ],
    ),
    (
        'k',
        [
            "#    ", "#    ", "#  # ", "# #  ", "##   ", "# #  ", "#  # ",
        ],
    ),
    (
        'l',
        [
            " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ",
        ],
    ),
    (
        'm',
        [
            "     ", "     ", "## # ", "# # #", "# # #", "#   #", "#   #",
        ],
    ),
    (
        'n',
        [
            "     ", "     ", "# ## ", "##  #", "#   #", "#   #", "#   #",
        ],
    ),
    (
        'o',
        [
            "     ", "     ", " ### ", "#   #", "#   #", "#   #", " ### ",
        ],
    ),
    (
        'p',
        [
            "     ", "     ", "#### ", "#   #", "#### ", "#    ", "#    ",
        ],
    ),
    (
        'q',
        [
            "     ", "     ", " ## #", "#  ##", " ####", "    #", "    #",
        ],
    ),
    (
        'r',
        [
            "     ", "     ", "# ## ", "##  #", "#    ", "#    ", "#    ",
        ],
    ),
    (
        's',
        [
            "     ", "     ", " ### ", "#    ", " ### ", "    #", "#### ",
        ],
    ),
    (
        't',
        [
            " #   ", " #   ", "###  ", " #   ", " #   ", " #  #", "  ## ",
        ],
    ),
    (
        'u',
        [
            "     ", "     ", "#   #", "#   #", "#   #", "#  ##", " ## #",
        ],
    ),
    (
        'v',
        [
            "     ", "     ", "#   #", "#   #", "#   #", " # # ", "  #  ",
        ],
    ),
    (
        'w',
        [
            "     ", "     ", "#   #", "#   #", "# # #", "# # #", " # # ",
        ],
    ),
    (
        'x',
        [
            "     ", "     ", "#   #", " # # ", "  #  ", " # # ", "#   #",
        ],
    ),
    (
        'y',
        [
            "     ", "     ", "#   #", "#   #", " ####", "    #", " ### ",
        ],
    ),
    (
        'z',
        [
            "     ", "     ", "#####", "   # ", "  #  ", " #   ", "#####",
        ],
    ),
];

/// The width in pixels of `text`.
pub fn text_width(text: &str) -> u32 {
    (text.chars().count() as u32 * ADVANCE).saturating_sub(1)
}

/// Draws `text` with its top-left corner at (`x`, `y`); pixels outside the image are skipped.
pub fn draw(img: &mut RgbImage, text: &str, x: i64, y: i64, color: Rgb<u8>) {
    for (i, c) in text.chars().enumerate() {
        let Some((_, rows)) = GLYPHS.iter().find(|(g, _)| *g == c) else {
            continue;
        };
        let left = x + i as i64 * i64::from(ADVANCE);
        for (dy, row) in rows.iter().enumerate() {
            for (dx, cell) in row.bytes().enumerate() {
                let (px, py) = (left + dx as i64, y + dy as i64);
                let inside = px >= 0
                    && py >= 0
                    && px < i64::from(img.width())
                    && py < i64::from(img.height());
                if cell == b'#' && inside {
                    img.put_pixel(px as u32, py as u32, color);
                }
            }
        }
    }
}

/// Draws `text` rotated a quarter turn counter-clockwise (read bottom to top), its glyphs'
/// tops to the left; (`x`, `y`) is the top-left corner of the rotated block.
pub fn draw_vertical(img: &mut RgbImage, text: &str, x: i64, y: i64, color: Rgb<u8>) {
    let (w, h) = (text_width(text).max(1), HEIGHT);
    let mut flat = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    draw(&mut flat, text, 0, 0, color);
    for (fx, fy, p) in flat.enumerate_pixels() {
        if *p == color {
            let (px, py) = (x + i64::from(fy), y + i64::from(w - 1 - fx));
            if px >= 0 && py >= 0 && px < i64::from(img.width()) && py < i64::from(img.height()) {
                img.put_pixel(px as u32, py as u32, color);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_are_five_by_seven_and_distinct() {
        for (c, rows) in GLYPHS {
            assert!(rows.iter().all(|r| r.len() == WIDTH as usize), "{c}");
        }
        for (i, (a, ra)) in GLYPHS.iter().enumerate() {
            for (b, rb) in &GLYPHS[i + 1..] {
                assert!(ra != rb, "{a} and {b} look alike");
            }
        }
    }

    #[test]
    fn text_is_drawn_where_asked() {
        let black = Rgb([0, 0, 0]);
        let mut img = RgbImage::from_pixel(40, 20, Rgb([255, 255, 255]));
        draw(&mut img, "1", 2, 3, black);
        // The foot of the 1 spans columns 1-3 of its cell, on its last row.
        assert_eq!(*img.get_pixel(3, 9), black);
        assert_eq!(*img.get_pixel(5, 9), black);
        assert_eq!(text_width("loss"), 23);
        let mut v = RgbImage::from_pixel(20, 40, Rgb([255, 255, 255]));
        draw_vertical(&mut v, "ll", 0, 0, black);
        assert!(v.pixels().filter(|p| **p == black).count() > 0);
    }
}
