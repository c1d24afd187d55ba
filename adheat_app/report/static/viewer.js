// adheat's interactive viewer (adheat_app/report/viewer.py inlines this file after NiiVue's bundle).
// Reads the JSON spec of <script id="adheat-viewer-data">: backgrounds, overlays (gzipped NIfTI, base64) and an
// atlas (label volume + region names). Shows one background and one overlay at a time; the pickers swap them
// (a volume is decoded when first picked, so the page starts with two volumes whatever their number),
// the threshold and colour controls change the overlay, and the readout names the crosshair's MNI coordinates,
// atlas region and overlay value. Without WebGL2 it shows the fallback box instead.
(function () {
  'use strict';
  var root = document.getElementById('adheat-viewer');
  var spec = JSON.parse(document.getElementById('adheat-viewer-data').textContent);
  function part(role) { return root.querySelector('[data-role="' + role + '"]'); }

  function fallback(reason) {
    root.dataset.state = 'fallback';
    part('canvas-box').hidden = true;
    part('controls').hidden = true;
    part('reason').textContent = reason;
    part('fallback').hidden = false;
  }

  function hasWebGL2() {
    try { return !!document.createElement('canvas').getContext('webgl2'); } catch (e) { return false; }
  }

  if (typeof niivue === 'undefined') { fallback('the NiiVue script did not run'); return; }
  if (!hasWebGL2()) { fallback('this browser offers no WebGL2'); return; }

  var nv = new niivue.Niivue({ isColorbar: true, backColor: [0, 0, 0, 1], crosshairColor: [1, 0, 0, 0.7],
                               crosshairWidth: 1, crosshairWidthUnit: 'mm', logLevel: 'error', loadingText: '' });
  var decoded = { backgrounds: {}, overlays: {} };
  var atlas = null;
  var current = { background: null, overlay: null, layer: null };
  var picks = { background: 0, overlay: 0 };

  function decode(layer) {
    var options = { base64: layer.data, name: layer.name + '.nii.gz', colormap: layer.colormap, opacity: 1,
                    cal_min: layer.threshold, cal_max: layer.cal_max, trustCalMinMax: true,
                    colorbarVisible: layer.colorbar, colormapNegative: layer.signed ? layer.colormap_negative : '' };
    return niivue.NVImage.loadFromBase64(options);
  }

  // The image of spec[kind][index], decoded once (a promise).
  function image(kind, index) {
    if (!decoded[kind][index]) { decoded[kind][index] = decode(spec[kind][index]); }
    return decoded[kind][index];
  }

  // Values within (-threshold, threshold) are transparent; a signed map's negative side mirrors the positive one.
  function setThreshold(image, value) {
    image.cal_min = value;
    nv.updateGLVolume();
  }

  function regionAt(mm) {
    if (!atlas) { return ''; }
    var vox = atlas.mm2vox(mm);
    var dims = atlas.hdr.dims;
    for (var i = 0; i < 3; i++) { if (vox[i] < 0 || vox[i] >= dims[i + 1]) { return 'outside the atlas'; } }
    var label = Math.round(atlas.getValue(vox[0], vox[1], vox[2]));
    return spec.atlas.names[String(label)] || 'no ' + spec.atlas.name + ' region';
  }

  function format(value) {
    if (!isFinite(value)) { return 'n/a'; }
    var magnitude = Math.abs(value);
    return magnitude !== 0 && (magnitude < 0.01 || magnitude >= 1e4) ? value.toExponential(2) : value.toFixed(3);
  }

  function showLocation(data) {
    var mm = data.mm;
    var text = 'MNI ' + [0, 1, 2].map(function (i) { return Math.round(mm[i]); }).join(', ') + ' mm';
    var region = regionAt([mm[0], mm[1], mm[2]]);
    if (region) { text += ' \u00b7 ' + spec.atlas.name + ': ' + region; }
    if (current.overlay) {
      var vox = current.overlay.mm2vox([mm[0], mm[1], mm[2]]);
      text += ' \u00b7 ' + current.layer.name + ': ' + format(current.overlay.getValue(vox[0], vox[1], vox[2]));
    }
    part('location').textContent = text;
    root.dataset.region = region;
  }

  function showControls(layer) {
    var slider = part('threshold');
    part('overlay-controls').hidden = layer === null;
    part('description').textContent = layer ? layer.description : '';
    if (!layer) { return; }
    slider.max = String(layer.max);
    slider.step = String(layer.max / 255);
    slider.value = String(layer.threshold);
    part('threshold-value').textContent = format(layer.threshold);
    part('colormap').value = layer.colormap;
  }

  // Pickers are asynchronous (decoding); a pick superseded by a later one while decoding is dropped.
  async function pickOverlay(index) {
    var pick = ++picks.overlay;
    var chosen = index >= 0 ? await image('overlays', index) : null;
    if (pick !== picks.overlay) { return; }
    if (current.overlay) { nv.removeVolume(current.overlay); }
    current.overlay = chosen;
    current.layer = index >= 0 ? spec.overlays[index] : null;
    if (current.overlay) {
      current.overlay.cal_min = current.layer.threshold;
      current.overlay.colormap = current.layer.colormap;
      nv.addVolume(current.overlay);
    }
    showControls(current.layer);
    root.dataset.overlay = current.layer ? current.layer.name : '';
    nv.createOnLocationChange();
  }

  async function pickBackground(index) {
    var pick = ++picks.background;
    var chosen = await image('backgrounds', index);
    if (pick !== picks.background || chosen === current.background) { return; }
    nv.addVolume(chosen);
    nv.setVolume(chosen, 0);
    if (current.background) { nv.removeVolume(current.background); }
    current.background = chosen;
    root.dataset.background = spec.backgrounds[index].name;
    nv.createOnLocationChange();
  }

  function goTo(text) {
    var mm = text.split(/[\s,;]+/).filter(Boolean).map(Number);
    if (mm.length !== 3 || mm.some(isNaN)) { part('goto').setCustomValidity('three numbers: x y z in mm'); return; }
    part('goto').setCustomValidity('');
    nv.scene.crosshairPos = nv.mm2frac(mm);
    nv.createOnLocationChange();
    nv.drawScene();
  }

  function bind() {
    part('background').addEventListener('change', function (e) { pickBackground(Number(e.target.value)); });
    part('overlay').addEventListener('change', function (e) { pickOverlay(Number(e.target.value)); });
    part('threshold').addEventListener('input', function (e) {
      var value = Number(e.target.value);
      part('threshold-value').textContent = format(value);
      setThreshold(current.overlay, value);
    });
    part('colormap').addEventListener('change', function (e) {
      nv.setColormap(current.overlay.id, e.target.value);
    });
    part('goto').addEventListener('change', function (e) { goTo(e.target.value); });
  }

  async function start() {
    await nv.attachToCanvas(part('canvas'));
    nv.onLocationChange = showLocation;
    if (spec.atlas) { atlas = await niivue.NVImage.loadFromBase64({ base64: spec.atlas.data, name: 'atlas.nii.gz' }); }
    await pickBackground(0);
    await pickOverlay(spec.initial);
    bind();
    root.dataset.state = 'ready';
  }

  start().catch(function (error) {
    fallback('the viewer failed to start: ' + error);
    console.error(error);
  });
})();
