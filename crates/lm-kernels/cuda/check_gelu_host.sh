#!/bin/sh
# Checks the GELU value and slope functions of kernels.cu without a GPU: compiles them as host C
# (gcc) and compares them, over x in [-8, 8] step 0.01, with the double-precision definitions
# (value) and central differences of those (slope, h = 1e-3). Prints the largest errors for the
# tanh form and the erf form; exits non-zero if one is above 1e-6.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
{
    printf '#include <math.h>\n#include <stdio.h>\n#define CUDART_SQRT_HALF_F 0.707106781F\n'
    sed -n '/^#define SQRT_2_OVER_PI/,/^\/\/ y\[i\] = gelu/p' "$here/kernels.cu" |
        sed 's/__device__ __forceinline__/static/'
    cat <<'C'
static double ref(double x, int exact) {
    return exact ? 0.5 * x * (1 + erf(x / sqrt(2.0)))
                 : 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}
int main(void) {
    const char *name[2] = {"tanh", "erf"};
    int bad = 0;
    for (int e = 0; e < 2; e++) {
        double worst_value = 0, worst_slope = 0, h = 1e-3;
        for (int i = -800; i <= 800; i++) {
            double x = i / 100.0;
            double dv = fabs(ref(x, e) - gelu_value((float)x, e));
            double numeric = (ref(x + h, e) - ref(x - h, e)) / (2 * h);
            double ds = fabs(numeric - gelu_slope((float)x, e));
            if (dv > worst_value) worst_value = dv;
            if (ds > worst_slope) worst_slope = ds;
        }
        printf("%s: value within %.2g, slope within %.2g\n", name[e], worst_value, worst_slope);
        bad |= worst_value > 1e-6 || worst_slope > 1e-6;
    }
    return bad;
}
C
} > "$tmp/gelu.c"
cc -O2 "$tmp/gelu.c" -o "$tmp/gelu" -lm
"$tmp/gelu"
