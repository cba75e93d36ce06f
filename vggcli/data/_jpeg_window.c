/* Decode only a window of a JPEG, at a reduced DCT scale, with libjpeg-turbo's own API.

   A training crop uses about half of the image's pixels. libjpeg-turbo can skip the rows
   above the window (jpeg_skip_scanlines: entropy decoding only, no IDCT, upsampling or
   colour conversion) and restrict every row to the window's columns (jpeg_crop_scanline),
   which TurboJPEG's tjDecompress2 (what FFCV calls) cannot. The pixels are bit-identical to
   the same window of a whole-image tjDecompress2 with FFCV's flags (TJFLAG_FASTDCT, fancy
   upsampling, RGB), which tests/test_input.py checks at every scale: the columns handed to
   libjpeg reach two pixels past the window where the image goes on, because the upsampler
   treats a cropped row's ends as the image's edges.

   Loaded with ctypes (vggcli/data/jpeg_window.py), like FFCV's own library; the module
   init below only lets Python import the file to find it. */
#include <Python.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

struct error_state {
    struct jpeg_error_mgr manager;
    jmp_buf bail_out;
    int warned;
};

static void on_error(j_common_ptr decoder) {
    longjmp(((struct error_state *)decoder->err)->bail_out, 1);
}

/* libjpeg prints warnings (corrupt or truncated data) to stderr; count them instead, as
   tjDecompress2 does (it then returns -1 although it decoded what it could) */
static void on_message(j_common_ptr decoder, int level) {
    if (level < 0) ((struct error_state *)decoder->err)->warned = 1;
}

/* Decode rows [top, top + rows) and columns [left, left + cols) of the image scaled by
   eighths/8 (pixels of the scaled image) into out, rows x cols x 3 RGB bytes; out holds
   capacity bytes, which the scaled image's size always suffices for (the last row spills
   past the window by up to a row). Returns 0, or -1
   when libjpeg fails or warns, or the window leaves the scaled image or out. */
int decode_window(const uint8_t *jpeg, uint64_t size, uint32_t eighths, uint32_t top,
                  uint32_t left, uint32_t rows, uint32_t cols, uint8_t *out, uint64_t capacity) {
    struct jpeg_decompress_struct decoder;
    struct error_state errors;
    decoder.err = jpeg_std_error(&errors.manager);
    errors.manager.error_exit = on_error;
    errors.manager.emit_message = on_message;
    errors.warned = 0;
    if (setjmp(errors.bail_out)) {
        jpeg_destroy_decompress(&decoder);
        return -1;
    }
    jpeg_create_decompress(&decoder);
    jpeg_mem_src(&decoder, jpeg, (unsigned long)size);
    jpeg_read_header(&decoder, TRUE);
    decoder.scale_num = eighths;
    decoder.scale_denom = 8;
    decoder.dct_method = JDCT_IFAST;
    decoder.out_color_space = JCS_EXT_RGB;
    jpeg_start_decompress(&decoder);
    uint64_t width = decoder.output_width, height = decoder.output_height;
    if (rows == 0 || cols == 0 || (uint64_t)top + rows > height || (uint64_t)left + cols > width) {
        jpeg_destroy_decompress(&decoder);
        return -1;
    }
    uint32_t first = left > 2 ? left - 2 : 0;
    uint32_t last = left + cols + 2 < width ? left + cols + 2 : (uint32_t)width;
    JDIMENSION x = first, span = last - first;
    jpeg_crop_scanline(&decoder, &x, &span);  /* widens to whole iMCUs: x <= first */
    if (((uint64_t)(rows - 1) * cols + span) * 3 > capacity) {  /* the last row's spill */
        jpeg_destroy_decompress(&decoder);
        return -1;
    }
    if (top > 0) jpeg_skip_scanlines(&decoder, top);
    /* each row lands in out where the window's row starts and is moved left into place at
       once (a row buffer of our own ran 13% slower: it shares cache sets with libjpeg's) */
    size_t shift = (size_t)(left - x) * 3;
    for (uint32_t r = 0; r < rows; r++) {
        JSAMPROW row = out + (size_t)r * cols * 3;
        jpeg_read_scanlines(&decoder, &row, 1);
        if (shift) memmove(row, row + shift, (size_t)cols * 3);
    }
    jpeg_abort_decompress(&decoder);
    jpeg_destroy_decompress(&decoder);
    return errors.warned ? -1 : 0;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpeg_window", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__jpeg_window(void) { return PyModule_Create(&module); }
