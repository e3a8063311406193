/* Status codes and the thread-local error message. */
#include <stdarg.h>
#include <stdio.h>

#include "sdcore.h"

#define SD_ERROR_LEN 1024

/* Each thread keeps its own message so concurrent calls never see each other's errors. */
static _Thread_local char error_message[SD_ERROR_LEN];

sd_status sd_fail(sd_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    return status;
}

const char *sd_last_error(void) { return error_message; }

void sd_clear_error(void) { error_message[0] = '\0'; }

const char *sd_status_name(sd_status status) {
    switch (status) {
    case SD_OK: return "ok";
    case SD_ERR_INVALID: return "invalid argument";
    case SD_ERR_NOMEM: return "out of memory";
    case SD_ERR_IO: return "i/o error";
    case SD_ERR_FORMAT: return "malformed file";
    case SD_ERR_UNSUPPORTED: return "unsupported";
    case SD_ERR_DEVICE: return "device error";
    case SD_ERR_CANCELLED: return "cancelled";
    }
    return "unknown status";
}
