//! Reference twin of `crate::conv`: the convolution sum written out directly (no im2col), every
//! pass accumulating in f64, any stride, padding and groups.

use crate::conv::ConvGeom;

/// Calls `f(x index, w index, y index)` for every multiply-add term of the convolution.
fn for_each_term(g: &ConvGeom, mut f: impl FnMut(usize, usize, usize)) {
    let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
    let (oh, ow) = (g.out_h(), g.out_w());
    for n in 0..g.n {
        for co in 0..g.cout {
            let grp = co / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((n * g.cout + co) * oh + oy) * ow + ox;
                    for cg in 0..cin_g {
                        let ci = grp * cin_g + cg;
                        for ky in 0..g.k {
                            for kx in 0..g.k {
                                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xi = ((n * g.cin + ci) * g.h + iy as usize) * g.w + ix as usize;
                                let wi = ((co * cin_g + cg) * g.k + ky) * g.k + kx;
                                f(xi, wi, yi);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn to_f32(v: Vec<f64>) -> Vec<f32> {
    v.into_iter().map(|v| v as f32).collect()
}

/// y[n,co,oy,ox] = bias[co] + Σ x[n,ci,oy·s+ky−p,ox·s+kx−p] · w[co,ci−g·cin_g,ky,kx].
pub(crate) fn forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    let [n, c, oh, ow] = g.output_shape();
    let mut y = vec![0f64; n * c * oh * ow];
    if let Some(b) = bias {
        for (i, v) in y.iter_mut().enumerate() {
            *v = f64::from(b[i / (oh * ow) % c]);
        }
    }
    for_each_term(g, |xi, wi, yi| y[yi] += f64::from(x[xi]) * f64::from(w[wi]));
    to_f32(y)
}

/// dx[xi] = Σ over the terms that read xi of dy[yi] · w[wi].
pub(crate) fn backward_input(dy: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let mut dx = vec![0f64; g.n * g.cin * g.h * g.w];
    for_each_term(g, |xi, wi, yi| {
        dx[xi] += f64::from(dy[yi]) * f64::from(w[wi])
    });
    to_f32(dx)
}

/// dw[wi] = Σ over the terms that use wi of dy[yi] · x[xi].
pub(crate) fn backward_weight(x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f32> {
    let mut dw = vec![0f64; g.weight_shape().iter().product()];
    for_each_term(g, |xi, wi, yi| {
        dw[wi] += f64::from(dy[yi]) * f64::from(x[xi])
    });
    to_f32(dw)
}

/// db[c] = Σ_{n,y,x} dy[n,c,y,x].
pub(crate) fn backward_bias(dy: &[f32], g: &ConvGeom) -> Vec<f32> {
    let [_, c, oh, ow] = g.output_shape();
    let mut db = vec![0f64; c];
    for (i, v) in dy.iter().enumerate() {
        db[i / (oh * ow) % c] += f64::from(*v);
    }
    to_f32(db)
}
