/* prefect-hunyuan3d gallery (Apache-2.0). A classic script: it must run from file://, where
 * Chromium refuses ES modules and fetch/XHR of local files.
 *
 * - Cards are rendered from the JSON in #hy3d-items, a chunk at a time as the page scrolls.
 * - Each card's viewer starts when it comes near the viewport (IntersectionObserver) and is
 *   disposed when it is far away and too many are alive, so thousands of items stay usable.
 * - One WebGL context for the whole page (browsers allow ~16): a shared three.js renderer draws
 *   a viewer's scene, then the frame is copied into the card's 2D canvas.
 * - Mesh bytes: over http(s), fetch(mesh.glb); from disk (or if that fails), the card's mesh.js
 *   sidecar, a plain <script> that stores the GLB as base64 in window.hy3dMeshes[id]. Either way
 *   GLTFLoader.parse reads the bytes: no request for the GLB is needed on file://. An item with a
 *   web GLB (deliverable "web": meshopt-compressed, WebP textures) shows that instead, from
 *   mesh.web.glb or its mesh.web.js sidecar; card.dataset.mesh says which ("web" or "glb").
 * - Deliverables are listed with their sizes; a USDZ gets an AR Quick Look link (<a rel="ar">).
 * - Each card carries data-loaded: "false" | "loading" | "true" | "error" | "none" (tests wait on it).
 */
(function () {
  "use strict";

  var T = window.HY3D_THREE;
  var CHUNK = 48; // cards added per step of infinite scroll
  var MAX_LIVE = 16; // viewers kept in memory; more are disposed once off-screen
  var MAX_LOADING = 3; // meshes read and parsed at once
  var FOV = 35;
  var AZIMUTH = (35 * Math.PI) / 180; // as tasks/preview.py, so the thumbnail and viewer match
  var ELEVATION = (20 * Math.PI) / 180;

  var page = JSON.parse(document.getElementById("hy3d-page").textContent);
  var items = JSON.parse(document.getElementById("hy3d-items").textContent);
  var grid = document.getElementById("grid");
  var more = document.getElementById("more");
  var search = document.getElementById("search");

  var state = { filter: "all", query: "", list: [], shown: 0 };
  var viewers = new Map(); // card element -> Viewer
  var live = []; // viewers holding a scene, least recently visible first
  var queue = []; // viewers waiting to load
  var loading = 0;
  var shared = null; // { renderer, environment } or { error }

  // -- the page ---------------------------------------------------------------------------------

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function link(href, text) {
    var a = el("a", null, text);
    a.href = href;
    return a;
  }

  function number(value) {
    return typeof value === "number" ? value.toLocaleString("en-US") : null;
  }

  function bytes(value) {
    if (typeof value !== "number") return null;
    if (value < 1024) return value + " B";
    if (value < 1024 * 1024) return (value / 1024).toFixed(1) + " KB";
    return (value / 1024 / 1024).toFixed(1) + " MB";
  }

  function header() {
    var run = page.latest_run || {};
    var line = document.getElementById("run");
    line.textContent = "Latest run: " + run.headline + " (" + run.finished_at + ")";
    if (run.summary) {
      line.appendChild(document.createTextNode(" — "));
      line.appendChild(link(run.summary, "run summary"));
    }
    if (run.stop_reason) line.appendChild(el("strong", "stopped", " Stopped early: " + run.stop_reason));
  }

  function matches(item) {
    if (state.filter === "landed" && !item.landed) return false;
    if (state.filter === "failed" && item.landed) return false;
    return !state.query || item.id.toLowerCase().indexOf(state.query) !== -1;
  }

  function reset() {
    viewers.forEach(function (viewer) {
      viewer.dispose();
      observer && observer.unobserve(viewer.box);
    });
    viewers.clear();
    live = [];
    queue = [];
    grid.textContent = "";
    state.list = items.filter(matches);
    state.shown = 0;
    var counts = document.getElementById("counts");
    var landed = items.filter(function (i) { return i.landed; }).length;
    counts.textContent =
      items.length + " item(s): " + landed + " landed, " + (items.length - landed) + " did not land" +
      (state.list.length !== items.length ? " — showing " + state.list.length : "");
    if (!state.list.length) grid.appendChild(el("p", "empty", "No item matches."));
    renderMore();
  }

  function renderMore() {
    var end = Math.min(state.shown + CHUNK, state.list.length);
    var fragment = document.createDocumentFragment();
    var added = [];
    for (var i = state.shown; i < end; i++) {
      var card = buildCard(state.list[i]);
      fragment.appendChild(card);
      added.push(card);
    }
    state.shown = end;
    grid.appendChild(fragment);
    added.forEach(function (card) {
      var viewer = viewers.get(card);
      if (viewer && observer) observer.observe(viewer.box);
      else if (viewer) enqueue(viewer); // no IntersectionObserver: load everything
    });
    more.textContent = state.shown < state.list.length ? "Loading more…" : "";
    // Still near the bottom (a tall screen): add the next chunk too.
    if (state.shown < state.list.length && more.getBoundingClientRect().top < window.innerHeight + 800) {
      window.requestAnimationFrame(renderMore);
    }
  }

  function buildCard(item) {
    var card = el("article", "card " + (item.landed ? "landed" : "not-landed"));
    card.dataset.id = item.id;
    card.dataset.status = item.status;
    card.dataset.loaded = item.landed && item.mesh ? "false" : "none";

    var box = el("div", "viewer");
    if (item.preview) {
      var poster = el("img", "poster");
      poster.src = item.preview;
      poster.alt = "";
      poster.loading = "lazy";
      box.appendChild(poster);
    }
    var canvas = el("canvas");
    canvas.setAttribute("aria-label", "3D view of " + item.id + ": drag to orbit, scroll to zoom, double-click to reset");
    box.appendChild(canvas);
    var message = el("div", "message");
    box.appendChild(message);
    if (!item.landed) message.textContent = item.status.replace(/_/g, " ");
    else if (!item.mesh) message.textContent = "no mesh";
    card.appendChild(box);

    var title = el("header");
    title.appendChild(el("h2", null, item.id));
    title.appendChild(el("span", "badge status-" + item.status, item.status.replace(/_/g, " ")));
    card.appendChild(title);

    var thumbs = el("div", "thumbs");
    thumbs.appendChild(figure(item.source_img, "source", item.source));
    thumbs.appendChild(figure(item.preview, "preview", null));
    card.appendChild(thumbs);

    var facts = el("dl", "facts");
    fact(facts, "faces", number(item.faces));
    fact(facts, "vertices", number(item.vertices));
    fact(facts, "seconds", typeof item.seconds === "number" ? item.seconds.toFixed(1) + " s" : null);
    fact(facts, "price", item.price);
    fact(facts, "mesh size", bytes(item.bytes));
    fact(facts, "model", item.model);
    fact(facts, "prediction", item.prediction);
    fact(facts, "finished", item.finished);
    card.appendChild(facts);

    if (item.error) {
      var error = el("p", "error");
      if (item.error_code !== null && item.error_code !== undefined) error.appendChild(el("code", null, item.error_code));
      error.appendChild(document.createTextNode(" " + item.error));
      card.appendChild(error);
    }
    if (item.deliverables && item.deliverables.length) card.appendChild(deliverables(item));
    if (item.usdz) card.appendChild(arLink(item));
    if (item.note) card.appendChild(el("p", "note", item.note));
    (item.warnings || []).forEach(function (w) { card.appendChild(el("p", "note", w)); });

    var links = el("nav", "links");
    if (item.mesh) links.appendChild(link(item.mesh, "mesh.glb"));
    if (item.metadata) links.appendChild(link(item.metadata, "metadata.json"));
    if (item.source && /^https?:\/\//.test(item.source)) links.appendChild(link(item.source, "source"));
    else if (item.source) links.appendChild(el("span", "path", item.source));
    card.appendChild(links);

    if (item.landed && item.mesh) viewers.set(card, new Viewer(card, box, canvas, message, item));
    return card;
  }

  var FORMAT_NAMES = { web: "web GLB", usdz: "USDZ", stl: "STL", obj: "OBJ (zip)" };

  function deliverables(item) {
    var list = el("ul", "deliverables");
    list.setAttribute("aria-label", "Deliverables");
    item.deliverables.forEach(function (d) {
      var entry = el("li");
      entry.dataset.format = d.format;
      var name = FORMAT_NAMES[d.format] || d.format;
      if (d.error) {
        entry.classList.add("failed");
        entry.appendChild(el("span", "name", name));
        entry.appendChild(el("span", "error", "failed"));
        entry.title = d.error;
      } else {
        entry.appendChild(d.href ? link(d.href, name) : el("span", "name", name));
        var size = bytes(d.bytes);
        if (size) entry.appendChild(el("span", "size", size));
      }
      list.appendChild(entry);
    });
    return list;
  }

  // AR Quick Look (iOS/iPadOS Safari) opens a USDZ linked with rel="ar" whose first child is an image.
  function arLink(item) {
    var a = el("a", "ar");
    a.rel = "ar";
    a.href = item.usdz;
    var img = el("img");
    img.src = item.preview || "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7";
    img.alt = "";
    a.appendChild(img);
    a.appendChild(document.createTextNode("View in AR"));
    return a;
  }

  function figure(src, caption, title) {
    var fig = el("figure");
    if (src) {
      var img = el("img");
      img.src = src;
      img.alt = caption;
      img.loading = "lazy";
      img.addEventListener("error", function () { fig.classList.add("broken"); });
      fig.appendChild(img);
    } else {
      fig.classList.add("broken");
    }
    var figcaption = el("figcaption", null, caption);
    if (title) figcaption.title = title;
    fig.appendChild(figcaption);
    return fig;
  }

  function fact(list, name, value) {
    if (value === null || value === undefined || value === "") return;
    list.appendChild(el("dt", null, name));
    list.appendChild(el("dd", null, value));
  }

  // -- mesh bytes -------------------------------------------------------------------------------

  function decodeBase64(text) {
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(text).buffer;
    var binary = window.atob(text);
    var out = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
    return out.buffer;
  }

  function fromSidecar(item, src) {
    return new Promise(function (resolve, reject) {
      if (!src) {
        reject(new Error("opened from disk, and this mesh has no mesh.js sidecar (too large): open mesh.glb"));
        return;
      }
      var store = (window.hy3dMeshes = window.hy3dMeshes || {});
      var script = document.createElement("script");
      script.async = true;
      script.src = src;
      script.onload = function () {
        var text = store[item.id];
        delete store[item.id];
        script.remove();
        if (typeof text !== "string") reject(new Error("mesh.js did not hold this mesh"));
        else {
          try { resolve(decodeBase64(text)); } catch (e) { reject(e); }
        }
      };
      script.onerror = function () {
        script.remove();
        reject(new Error("could not load " + src));
      };
      document.head.appendChild(script);
    });
  }

  // Resolves to the GLB's bytes: the web GLB when the item has one, else mesh.glb. Notes on the
  // card how they came ("fetch" or "sidecar") and which mesh it is ("web" or "glb").
  function meshBytes(item, card) {
    var web = !!item.web;
    card.dataset.mesh = web ? "web" : "glb";
    function sidecar() {
      card.dataset.via = "sidecar";
      if (web && !item.web_sidecar) {
        card.dataset.mesh = "glb"; // no web sidecar (too large, or made by a run without previews)
        return fromSidecar(item, item.sidecar);
      }
      return fromSidecar(item, web ? item.web_sidecar : item.sidecar);
    }
    if (location.protocol === "http:" || location.protocol === "https:") {
      card.dataset.via = "fetch";
      var url = web ? item.web : item.mesh;
      return fetch(url).then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status + " for " + url);
        return response.arrayBuffer();
      }).catch(function (error) {
        if (item.sidecar || item.web_sidecar) return sidecar();
        throw error;
      });
    }
    return sidecar();
  }

  function parse(buffer) {
    return new Promise(function (resolve, reject) {
      var loader = new T.GLTFLoader();
      if (T.MeshoptDecoder) loader.setMeshoptDecoder(T.MeshoptDecoder); // web GLBs: EXT_meshopt_compression
      loader.parse(buffer, "", resolve, reject);
    });
  }

  // -- the shared renderer ----------------------------------------------------------------------

  function renderer() {
    if (shared) return shared;
    try {
      var r = new T.WebGLRenderer({ antialias: true, alpha: true, powerPreference: "low-power" });
      r.setPixelRatio(1); // canvases are sized in device pixels below
      r.outputColorSpace = T.SRGBColorSpace;
      r.toneMapping = T.NeutralToneMapping;
      r.setClearColor(0x000000, 0);
      var pmrem = new T.PMREMGenerator(r);
      var environment = pmrem.fromScene(new T.RoomEnvironment(), 0.04).texture;
      pmrem.dispose();
      r.domElement.addEventListener("webglcontextlost", function (event) { event.preventDefault(); });
      r.domElement.addEventListener("webglcontextrestored", function () {
        live.forEach(function (viewer) { viewer.requestRender(); });
      });
      shared = { renderer: r, environment: environment };
    } catch (error) {
      shared = { error: "WebGL is not available here (" + (error && error.message ? error.message : error) + ")" };
    }
    return shared;
  }

  var pending = new Set();
  var frameRequested = false;

  function scheduleRender(viewer) {
    pending.add(viewer);
    if (frameRequested) return;
    frameRequested = true;
    window.requestAnimationFrame(function () {
      frameRequested = false;
      var batch = Array.from(pending);
      pending.clear();
      batch.forEach(function (v) { v.render(); });
    });
  }

  // -- one card's viewer ------------------------------------------------------------------------

  function Viewer(card, box, canvas, message, item) {
    this.card = card;
    this.box = box;
    this.canvas = canvas;
    this.message = message;
    this.item = item;
    this.context = canvas.getContext("2d");
    this.scene = null;
    this.visible = false;
    this.generation = 0;
    this.queued = false;
  }

  Viewer.prototype.requestRender = function () {
    if (this.scene) scheduleRender(this);
  };

  Viewer.prototype.load = function () {
    var self = this;
    var generation = ++this.generation;
    this.card.dataset.loaded = "loading";
    this.message.textContent = "";
    var gl = renderer();
    if (gl.error) return Promise.resolve(this.fail(gl.error));
    return meshBytes(this.item, this.card)
      .then(parse)
      .then(function (gltf) {
        if (generation !== self.generation) {
          disposeObject(gltf.scene);
          return;
        }
        self.setUp(gltf.scene, gl);
        self.render();
        self.card.classList.add("live");
        self.card.dataset.loaded = "true";
      })
      .catch(function (error) {
        if (generation === self.generation) self.fail(error && error.message ? error.message : String(error));
      });
  };

  Viewer.prototype.fail = function (text) {
    this.card.dataset.loaded = "error";
    this.card.dataset.error = text;
    this.message.textContent = text;
    console.warn("hy3d gallery: " + this.item.id + ": " + text);
  };

  Viewer.prototype.setUp = function (root, gl) {
    var scene = new T.Scene();
    scene.environment = gl.environment;
    scene.add(new T.HemisphereLight(0xffffff, 0x8a8a8a, 0.8));
    var key = new T.DirectionalLight(0xffffff, 1.6);
    key.position.set(-0.45, 0.65, 0.62);
    scene.add(key);
    scene.add(root);

    var box = new T.Box3().setFromObject(root);
    var centre = box.isEmpty() ? new T.Vector3() : box.getCenter(new T.Vector3());
    var radius = box.isEmpty() ? 1 : Math.max(box.getSize(new T.Vector3()).length() / 2, 1e-6);
    var distance = (radius / Math.sin((FOV * Math.PI) / 360)) * 1.02;
    var camera = new T.PerspectiveCamera(FOV, 1, radius / 100, radius * 100);
    camera.position.set(
      centre.x + distance * Math.sin(AZIMUTH) * Math.cos(ELEVATION),
      centre.y + distance * Math.sin(ELEVATION),
      centre.z + distance * Math.cos(AZIMUTH) * Math.cos(ELEVATION)
    );
    camera.lookAt(centre);

    var controls = new T.OrbitControls(camera, this.canvas);
    controls.target.copy(centre);
    controls.minDistance = radius * 0.2;
    controls.maxDistance = radius * 20;
    controls.zoomToCursor = true;
    controls.update();
    controls.saveState();
    var self = this;
    controls.addEventListener("change", function () { self.requestRender(); });
    this.onDoubleClick = function () { controls.reset(); };
    this.canvas.addEventListener("dblclick", this.onDoubleClick);

    this.scene = scene;
    this.camera = camera;
    this.controls = controls;
    this.root = root;
    live.push(this);
    trim();
  };

  Viewer.prototype.render = function () {
    if (!this.scene || !shared || !shared.renderer) return;
    var ratio = Math.min(window.devicePixelRatio || 1, 2);
    var width = Math.max(1, Math.round(this.canvas.clientWidth * ratio));
    var height = Math.max(1, Math.round(this.canvas.clientHeight * ratio));
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
    var r = shared.renderer;
    if (r.domElement.width !== width || r.domElement.height !== height) r.setSize(width, height, false);
    if (this.camera.aspect !== width / height) {
      this.camera.aspect = width / height;
      this.camera.updateProjectionMatrix();
    }
    r.render(this.scene, this.camera);
    // Copied in the same task as the draw, so the WebGL buffer still holds the frame.
    this.context.clearRect(0, 0, width, height);
    this.context.drawImage(r.domElement, 0, 0, width, height);
  };

  Viewer.prototype.dispose = function () {
    this.generation++;
    this.queued = false;
    if (this.card.dataset.loaded === "loading") this.card.dataset.loaded = "false";
    if (!this.scene) return;
    this.controls.dispose();
    this.canvas.removeEventListener("dblclick", this.onDoubleClick);
    disposeObject(this.root);
    this.scene = this.camera = this.controls = this.root = null;
    this.context.clearRect(0, 0, this.canvas.width, this.canvas.height);
    this.card.classList.remove("live");
    this.card.dataset.loaded = "false";
    pending.delete(this);
    var index = live.indexOf(this);
    if (index !== -1) live.splice(index, 1);
  };

  function disposeObject(root) {
    root.traverse(function (node) {
      if (node.geometry) node.geometry.dispose();
      var materials = Array.isArray(node.material) ? node.material : node.material ? [node.material] : [];
      materials.forEach(function (material) {
        Object.keys(material).forEach(function (key) {
          var value = material[key];
          if (value && value.isTexture) value.dispose();
        });
        material.dispose();
      });
    });
  }

  // Drop the least recently seen viewers that are off-screen, beyond MAX_LIVE.
  function trim() {
    for (var i = 0; live.length > MAX_LIVE && i < live.length; ) {
      if (!live[i].visible) live[i].dispose();
      else i++;
    }
  }

  function enqueue(viewer) {
    if (viewer.scene || viewer.queued || viewer.card.dataset.loaded === "loading") return;
    viewer.queued = true;
    queue.push(viewer);
    pump();
  }

  function pump() {
    while (loading < MAX_LOADING && queue.length) {
      var viewer = queue.shift();
      if (!viewer.queued) continue;
      viewer.queued = false;
      if (observer && !viewer.visible) {
        viewer.card.dataset.loaded = "false";
        continue;
      }
      loading++;
      viewer.load().then(function () {
        loading--;
        pump();
      });
    }
  }

  var observer =
    "IntersectionObserver" in window
      ? new IntersectionObserver(
          function (entries) {
            entries.forEach(function (entry) {
              var viewer = viewers.get(entry.target.parentElement);
              if (!viewer) return;
              viewer.visible = entry.isIntersecting;
              if (entry.isIntersecting) {
                var index = live.indexOf(viewer);
                if (index !== -1) {
                  live.splice(index, 1);
                  live.push(viewer); // most recently seen last
                  viewer.requestRender();
                } else {
                  enqueue(viewer);
                }
              } else {
                viewer.queued = false;
              }
            });
            trim();
          },
          { rootMargin: "300px 0px" }
        )
      : null;

  var moreObserver =
    "IntersectionObserver" in window
      ? new IntersectionObserver(
          function (entries) {
            if (entries.some(function (e) { return e.isIntersecting; }) && state.shown < state.list.length) renderMore();
          },
          { rootMargin: "800px 0px" }
        )
      : null;

  window.addEventListener("resize", function () {
    live.forEach(function (viewer) { viewer.requestRender(); });
  });

  document.querySelectorAll("[data-filter]").forEach(function (button) {
    button.addEventListener("click", function () {
      state.filter = button.dataset.filter;
      document.querySelectorAll("[data-filter]").forEach(function (b) {
        b.setAttribute("aria-pressed", String(b === button));
      });
      reset();
    });
  });
  var searchTimer = null;
  search.addEventListener("input", function () {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(function () {
      state.query = search.value.trim().toLowerCase();
      reset();
    }, 150);
  });

  // For tests and the curious: the state of the page.
  window.hy3dGallery = {
    items: items,
    live: function () { return live.length; },
    renderer: function () { return shared; },
  };

  header();
  reset();
  if (moreObserver) moreObserver.observe(more);
  else while (state.shown < state.list.length) renderMore();
})();
