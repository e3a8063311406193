/* Text to image with sdcore's C library: the same picture as
 *
 *     sdcore generate PROMPT --seed SEED -o OUT [--model MODEL]
 *
 * (20 steps, euler_a, the model's default size and guidance), pixel for pixel.
 *
 *     txt2img MODEL_DIR PROMPT SEED OUT.png [NEGATIVE_PROMPT]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "sdcore_api.h"

static int progress(void *ctx, int step, int total) {
    (void)ctx;
    fprintf(stderr, "\rstep %d/%d", step, total);
    if (step == total)
        fputc('\n', stderr);
    return 0; /* nonzero would cancel */
}

int main(int argc, char **argv) {
    /* Idle OpenMP threads should sleep rather than spin: the engine alternates OpenMP loops
     * with OpenBLAS calls that have threads of their own, and spinning workers take the cores
     * from them (several times slower on a small machine). libgomp reads the setting when
     * it loads, before main, so the program runs itself again with it set (the Python
     * package sets it before loading the engine). */
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
        execv("/proc/self/exe", argv);
        /* no /proc: carry on with spinning threads */
    }
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: %s MODEL_DIR PROMPT SEED OUT.png [NEGATIVE_PROMPT]\n", argv[0]);
        return 2;
    }
    char *end;
    errno = 0;
    unsigned long long seed = strtoull(argv[3], &end, 10);
    if (errno || *end || argv[3][0] == '-' || end == argv[3]) {
        fprintf(stderr, "txt2img: seed: must be an integer between 0 and 2**64 - 1, got '%s'\n",
                argv[3]);
        return 2;
    }
    sd_model *model;
    sd_status s = sd_model_load(argv[1], &model);
    if (s != SD_OK) {
        fprintf(stderr, "txt2img: %s\n", sd_last_error());
        return 1;
    }
    sd_generate_params p;
    sd_generate_params_init(&p);
    p.prompt = argv[2];
    p.negative_prompt = argc == 6 ? argv[5] : NULL;
    p.seed = seed;
    p.on_step = progress;
    sd_image image;
    s = sd_generate(model, &p, &image);
    if (s == SD_OK) {
        s = sd_image_write_png(&image, argv[4]);
        sd_image_free(&image);
    }
    if (s != SD_OK)
        fprintf(stderr, "txt2img: %s\n", sd_last_error());
    else
        printf("%s  seed %llu\n", argv[4], seed);
    sd_model_free(model);
    return s == SD_OK ? 0 : 1;
}
