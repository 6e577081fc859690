/* The interface of common/: mechanisms with no fleet policy. */
#ifndef KF_COMMON_H
#define KF_COMMON_H

#include "buf.h"
#include "error.h"
#include "log.h"
#include "text.h"
#include "valid.h"

#define KF_VERSION "0.1.0"

#endif
