"""How many pixels an image may claim before it is decoded whole: a plain number, so the command's help
shows it without importing numpy or Pillow (`data.io.max_pixels` applies it, with SEGLAB_MAX_PIXELS)."""

# Images are decoded whole only up to this many pixels (Pillow's own decompression-bomb limit,
# 2 x 89.5 M: a 13378 x 13378 image). A file whose header claims more is refused before it is
# decoded, as any unreadable file is. --max-pixels (or SEGLAB_MAX_PIXELS) raises it; huge TIFFs
# given to `seglab predict` are streamed in bands and need no such limit.
DEFAULT_MAX_PIXELS = 2 * 89_478_485
