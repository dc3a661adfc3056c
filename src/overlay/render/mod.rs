//! `.ww` templates rendered with Tera over Warewulf's template data and functions.
