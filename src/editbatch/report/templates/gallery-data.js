// What index.js and the chunk files call: they are scripts, as a page opened from file:// may not fetch().
var editbatchGallery = {chunks: {}, index: null};
function editbatchIndex(meta, items) { editbatchGallery.index = {meta: meta, items: items}; }
function editbatchChunk(k, rows) { editbatchGallery.chunks[k] = rows; }
