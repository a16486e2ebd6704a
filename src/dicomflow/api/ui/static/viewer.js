// dicomflow viewer: rendered frames (WADO-RS .../frames/{n}/rendered) in an <img>, scrolled
// with the wheel or keys, window/level presets (the server applies the window), and zoom.
"use strict";

(function () {
  const data = document.getElementById("viewer-data");
  if (!data) return;
  const { frames, first } = JSON.parse(data.textContent);
  const viewport = document.getElementById("viewport");
  const img = document.getElementById("frame");
  const info = document.getElementById("frame-info");
  const slider = document.getElementById("frame-slider");
  const status = document.getElementById("frame-status");
  const tags = document.getElementById("tags-link");
  const download = document.getElementById("download-link");
  const overlayImage = document.getElementById("overlay-image");
  const overlayWindow = document.getElementById("overlay-window");
  const centerInput = document.getElementById("window-center");
  const widthInput = document.getElementById("window-width");
  const zoomLevel = document.getElementById("zoom-level");
  const presets = Array.from(document.querySelectorAll(".presets button"));
  const cache = new Map();
  const PREFETCH = 3;
  const ZOOM_STEP = 1.25;
  const ZOOM_MIN = 0.05;
  const ZOOM_MAX = 32;

  let current = first;
  let windowParam = "";
  let zoom = null; // null: fit to the viewport; otherwise image pixels per screen pixel

  function url(index) {
    const frame = frames[index];
    const params = new URLSearchParams({ accept: "image/png" });
    if (frame.viewport) params.set("viewport", frame.viewport);
    if (windowParam) params.set("window", windowParam);
    return frame.url + "?" + params.toString();
  }

  function prefetch(index) {
    for (let step = 1; step <= PREFETCH; step += 1) {
      for (const i of [index + step, index - step]) {
        if (i < 0 || i >= frames.length) continue;
        const key = url(i);
        if (cache.has(key)) continue;
        const image = new Image();
        image.src = key;
        cache.set(key, image);
        if (cache.size > 64) cache.delete(cache.keys().next().value);
      }
    }
  }

  function describe() {
    const frame = frames[current];
    let text = "Image " + (current + 1) + " of " + frames.length + " (instance " + (frame.number || "?");
    text += frame.frames > 1 ? ", frame " + frame.frame + " of " + frame.frames + ")" : ")";
    info.textContent = text;
    img.alt = text;
    slider.value = String(current + 1);
    tags.href = frame.tags;
    download.href = frame.download;
    overlayImage.textContent = "Im " + (current + 1) + "/" + frames.length;
    const shown = windowParam || frame.window;
    if (shown) {
      const [center, width] = shown.split(",");
      overlayWindow.textContent = "W " + width + " L " + center;
      if (!windowParam) {
        centerInput.value = center;
        widthInput.value = width;
      }
    } else {
      overlayWindow.textContent = "";
    }
  }

  function show(index) {
    current = Math.max(0, Math.min(frames.length - 1, index));
    const next = url(current);
    if (img.getAttribute("src") !== next) {
      status.hidden = false;
      img.src = next;
    }
    describe();
    prefetch(current);
  }

  img.addEventListener("load", function () {
    status.hidden = true;
    layout();
  });
  img.addEventListener("error", function () {
    status.hidden = false;
    status.textContent = "This image cannot be rendered.";
  });

  // zoom: the image is sized in CSS pixels; the viewport scrolls when it is larger.
  function fitScale() {
    const width = img.naturalWidth || 1;
    const height = img.naturalHeight || 1;
    return Math.min(viewport.clientWidth / width, viewport.clientHeight / height);
  }

  function layout() {
    const scale = zoom === null ? fitScale() : zoom;
    img.style.width = Math.round((img.naturalWidth || 0) * scale) + "px";
    img.style.height = Math.round((img.naturalHeight || 0) * scale) + "px";
    zoomLevel.textContent = Math.round(scale * 100) + "%" + (zoom === null ? " (fit)" : "");
  }

  function zoomBy(direction) {
    const scale = zoom === null ? fitScale() : zoom;
    const next = direction > 0 ? scale * ZOOM_STEP : scale / ZOOM_STEP;
    zoom = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, next));
    layout();
  }

  document.getElementById("zoom-in").addEventListener("click", () => zoomBy(1));
  document.getElementById("zoom-out").addEventListener("click", () => zoomBy(-1));
  document.getElementById("zoom-fit").addEventListener("click", () => { zoom = null; layout(); });
  document.getElementById("zoom-actual").addEventListener("click", () => { zoom = 1; layout(); });
  window.addEventListener("resize", layout);

  // window / level
  function setWindow(value, pressed) {
    windowParam = value;
    presets.forEach((button) => button.setAttribute("aria-pressed", String(button === pressed)));
    if (value) {
      const [center, width] = value.split(",");
      centerInput.value = center;
      widthInput.value = width;
    } else {
      centerInput.value = "";
      widthInput.value = "";
    }
    show(current);
  }
  presets.forEach((button) => button.addEventListener("click", () => setWindow(button.dataset.window, button)));
  document.getElementById("apply-window").addEventListener("click", function () {
    const center = Number(centerInput.value);
    const width = Number(widthInput.value);
    if (!Number.isFinite(center) || !Number.isFinite(width) || width < 1) {
      widthInput.setCustomValidity("The width must be a number of at least 1.");
      widthInput.reportValidity();
      return;
    }
    widthInput.setCustomValidity("");
    setWindow(center + "," + width, null);
  });

  // scrolling through the series
  slider.addEventListener("input", () => show(Number(slider.value) - 1));
  document.getElementById("prev-frame").addEventListener("click", () => show(current - 1));
  document.getElementById("next-frame").addEventListener("click", () => show(current + 1));

  viewport.addEventListener("wheel", function (event) {
    event.preventDefault();
    if (event.ctrlKey) {
      zoomBy(event.deltaY < 0 ? 1 : -1);
    } else {
      show(current + (event.deltaY > 0 ? 1 : -1));
    }
  }, { passive: false });

  viewport.addEventListener("keydown", function (event) {
    const moves = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 };
    if (event.key in moves) {
      show(current + moves[event.key]);
    } else if (event.key === "Home") {
      show(0);
    } else if (event.key === "End") {
      show(frames.length - 1);
    } else if (event.key === "+" || event.key === "=") {
      zoomBy(1);
    } else if (event.key === "-") {
      zoomBy(-1);
    } else if (event.key === "0") {
      zoom = null;
      layout();
    } else if (/^[1-6]$/.test(event.key)) {
      const button = presets[Number(event.key) - 1];
      if (button) setWindow(button.dataset.window, button);
    } else {
      return;
    }
    event.preventDefault();
  });

  // panning a zoomed image by dragging
  let drag = null;
  viewport.addEventListener("pointerdown", function (event) {
    drag = { x: event.clientX, y: event.clientY, left: viewport.scrollLeft, top: viewport.scrollTop };
    viewport.classList.add("dragging");
    viewport.setPointerCapture(event.pointerId);
  });
  viewport.addEventListener("pointermove", function (event) {
    if (!drag) return;
    viewport.scrollLeft = drag.left - (event.clientX - drag.x);
    viewport.scrollTop = drag.top - (event.clientY - drag.y);
  });
  function endDrag() {
    drag = null;
    viewport.classList.remove("dragging");
  }
  viewport.addEventListener("pointerup", endDrag);
  viewport.addEventListener("pointercancel", endDrag);

  describe();
  prefetch(current);
  if (img.complete) layout();
})();
